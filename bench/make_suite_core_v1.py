"""Writes engine/bench/suites/core-v1.jsonl: the versioned query suite of the comparison dashboard.

Every text here was written for tokenforge (no downloads). Run once; the JSONL is committed, and
a changed suite must get a new version name (core-v2 …) so stored runs stay comparable.
Long documents are kept to <= ~1.5K tokens (SmolLM2 tokenizer) so a run on a 2-core CPU stays
practical; the planted fact sits at a stated depth (fraction of the document before it).
"""
from __future__ import annotations

import json
from pathlib import Path

SUITE = "core-v1"
SYS = "You are a helpful assistant. Answer briefly."

CHAT = [
    ("chat-1", "Give me three tips for keeping houseplants alive in winter.", SYS, [], []),
    ("chat-2", "Explain in two sentences why the sky looks blue.", SYS, [], []),
    ("chat-3", "Write a haiku about a bicycle in the rain.", None, [], []),
    ("chat-4", "What is the difference between a list and a tuple in Python?", SYS, [], []),
    ("chat-5", "Suggest a name for a grey cat that likes to sleep on books.", None, [], []),
    ("chat-6", "How do I boil an egg so the yolk stays soft?", SYS, [], []),
    ("chat-7", "And how long should I cook it if I want it hard instead?", SYS,
     ["How do I boil an egg so the yolk stays soft?"],
     ["Put the egg in boiling water for about six minutes, then cool it in cold water."]),
    ("chat-8", "Can you turn that plan into a short checklist?", SYS,
     ["I want to start running. What should I do in the first week?",
      "What shoes should I wear?"],
     ["Run three times, twenty minutes each, mixing one minute of running with one of walking.",
      "Comfortable running shoes with good cushioning that fit your foot well."]),
]

QA = [
    ("qa-1", "The Harlow community library opens at 9 a.m. on weekdays and at 11 a.m. on Saturdays. "
     "It is closed on Sundays. Members may borrow up to six books for three weeks.",
     "What time does the library open on Saturdays?", "11 a.m."),
    ("qa-2", "Mira planted tomatoes, basil and peppers in May. The basil was eaten by snails, but the "
     "peppers grew well and she harvested forty of them in August.",
     "How many peppers did Mira harvest?", "forty"),
    ("qa-3", "The ferry to Skarholm leaves from pier 4 every two hours, starting at 7:15. The crossing "
     "takes fifty minutes. Bicycles travel free, cars pay twelve euros.",
     "From which pier does the ferry leave?", "pier 4"),
    ("qa-4", "Orion Tools sold 1,200 drills in the first quarter. Sales did not rise in the second "
     "quarter: they fell to 950 because a supplier shipped motors late.",
     "Why did drill sales fall in the second quarter?", "a supplier shipped motors late"),
    ("qa-5", "The recipe needs 250 grams of flour, two eggs and a cup of milk. Whisk the eggs first, "
     "then add the milk, and fold in the flour last. Bake at 180 degrees for 25 minutes.",
     "At what temperature should it be baked?", "180 degrees"),
    ("qa-6", "Tomas is older than Ana but younger than Lee. Ana is twelve. Lee turned sixteen last "
     "month, and Tomas is exactly one year younger than Lee.",
     "How old is Tomas?", "fifteen"),
    ("qa-7", "The museum's blue gallery shows maps from the 1700s. The red gallery holds ship models, "
     "and the green gallery is closed for repairs until March.",
     "Which gallery is closed?", "the green gallery"),
    ("qa-8", "Project Larkspur is led by Dr. Imani Osei. The team has five engineers and one designer. "
     "Their first prototype, a solar water pump, was tested in Kisumu.",
     "Who leads Project Larkspur?", "Dr. Imani Osei"),
]

# Filler paragraphs for the long documents: a fictional town's annual report.
PARAS = [
    "The town of Eastmere sits where the river Arden meets the sea. Its harbour was dug in the "
    "eighteenth century and still shelters a small fishing fleet, a ferry and a dozen sailing clubs.",
    "Over the past year the council repaired the north quay, replaced two hundred street lamps "
    "with LED fittings and opened a new cycle path along the old railway line to Willowford.",
    "The weekly market moved from the square to the covered hall in October. Traders report that "
    "footfall rose in the winter months, although some older residents miss the open-air stalls.",
    "School numbers were stable. The primary school added a reading garden, built by parents over "
    "three weekends, and the secondary school started an evening course in boat building.",
    "The river authority dredged the lower channel in spring. Mud from the channel was carried "
    "inland and spread on farmland, which the farmers' cooperative had requested for some years.",
    "Tourism recovered slowly. The summer festival drew crowds to the harbour for the regatta, but "
    "the number of overnight stays remained below the level recorded before the bridge closure.",
    "The library ran a series of talks on local history, including one on the great storm that "
    "flooded the lower town and another on the smugglers who once used the caves below the cliffs.",
    "Housing remained the main concern raised at public meetings. Forty new homes were approved "
    "on the former dairy site, a quarter of them to be let at rents set by the housing trust.",
    "The bus service to the county town was cut to one bus an hour on Sundays. A volunteer car "
    "scheme now takes residents without a car to hospital appointments at no charge.",
    "Water quality at the two beaches met the bathing standard all season. Volunteers collected "
    "more than two tonnes of litter during four beach cleans organised by the sailing clubs.",
    "The fire station recruited six new on-call firefighters. Most calls last year were to "
    "chimney fires and to cars stuck on the causeway at high tide despite the warning signs.",
    "The allotment society reported its best potato harvest in a decade, helped by a dry spring. "
    "A waiting list for plots was opened, and the council is looking for land for twenty more.",
    "Work began on restoring the clock tower. The original mechanism, made by a local smith, was "
    "taken apart and cleaned, and the bells will be rehung once the frame has been repaired.",
    "The health centre extended its opening hours on Tuesdays and Thursdays. A pharmacist now "
    "holds a weekly clinic for minor ailments, which has shortened the wait for appointments.",
    "Broadband reached the outlying farms in the autumn after a long campaign. Several small "
    "businesses, including a pottery and a cheese maker, now sell most of their goods online.",
    "The harbour master noted a rise in visiting yachts. Berthing fees were held at last year's "
    "level, and a new pontoon for dinghies was installed at the end of the south wall.",
    "Local elections returned the same number of councillors from each group. Turnout was "
    "slightly higher than four years ago, particularly in the wards near the harbour.",
    "The budget for next year keeps the council tax rise below inflation. Savings come from "
    "sharing a planning officer with Willowford and from lower energy bills for street lighting.",
    "The heritage trust published a walking trail linking twelve historic buildings. Printed maps "
    "are free at the library, and small plaques give the history of each building in brief.",
    "The sports ground hosted the county youth football finals. The pitch was re-drained before "
    "the tournament, and the changing rooms were refitted with a grant from the sports board.",
    "The coastguard station held an open day. Children climbed into the lifeboat, and the crew "
    "showed how flares, radios and the rescue winch are checked before each winter season.",
    "A survey of seabirds on the cliffs counted fewer puffins than five years ago but more "
    "razorbills. The wardens asked walkers to keep dogs on leads during the nesting months.",
    "The old cinema reopened as a community arts centre. It shows films on Fridays, hosts a choir "
    "on Wednesdays and lends its stage to the drama group for two productions a year.",
    "Road repairs on the coast road took longer than planned because of a landslip near the "
    "quarry. A temporary traffic light controlled the single lane for most of the summer.",
    "The food bank served more families than in any previous year. Donations from the harvest "
    "festival and from the supermarket's collection point kept the shelves stocked until spring.",
    "The swimming pool closed for six weeks while its boiler was replaced. The new boiler burns "
    "less gas, and the pool now opens an hour earlier for lane swimming on weekdays.",
    "The museum received a collection of letters written by a lighthouse family in the 1890s. "
    "Volunteers are transcribing them, and a selection will be displayed next summer.",
    "Flood defences along the lower town were inspected after the January gales. Two gates were "
    "repaired and sandbags were stored at the fire station for residents to collect.",
    "The rowing club celebrated its centenary with a race around the island. Twenty crews took "
    "part, including a team of former members whose combined age was more than four hundred.",
    "The planning committee refused an application for a wind turbine on Beacon Hill after "
    "objections about the view, but approved solar panels on the roof of the leisure centre.",
    "Two new cafes opened on the harbour front. The council extended outdoor seating licences "
    "until October, which traders say helped them through a wet August.",
    "The community orchard on the old rectory field produced its first real crop. Apples were "
    "pressed into juice at the autumn fair and sold to raise money for new trees.",
    "The police post in the town hall now opens on Monday mornings. Officers reported fewer "
    "thefts from boats after owners were encouraged to mark their outboard engines.",
    "The choir sang at the twin town's festival in Brittany. The visit was paid for by concerts "
    "held over the previous year and by a small grant from the twinning association.",
    "Broad sand built up at the mouth of the river during the autumn storms. The harbour master "
    "asked skippers to enter only two hours either side of high water until it was cleared.",
    "The year ended with the lantern parade. Hundreds of children carried paper lanterns from the "
    "school to the harbour, where the fishing fleet sounded its horns at midnight.",
]

LONG = [
    ("long-1", 12, 0.15, "The new lighthouse keeper is named Petra Vance.",
     "What is the name of the new lighthouse keeper?", "Petra Vance"),
    ("long-2", 20, 0.45, "The secret code for the harbour gate is 4417.",
     "What is the code for the harbour gate?", "4417"),
    ("long-3", 28, 0.7, "The town's oldest oak tree stands behind the blue chapel on Mill Lane.",
     "Where does the town's oldest oak tree stand?", "behind the blue chapel on Mill Lane"),
    ("long-4", 36, 0.9, "The annual regatta trophy was won by a boat called Silver Heron.",
     "Which boat won the annual regatta trophy?", "Silver Heron"),
]


def long_doc(n: int, depth: float, fact: str) -> str:
    paras = list(PARAS[:n])
    at = round(depth * n)
    paras.insert(at, fact)
    return "\n\n".join(paras)


def records() -> list[dict]:
    out = []
    for qid, prompt, system, turns, replies in CHAT:
        out.append({"suite": SUITE, "id": qid, "kind": "chat", "prompt": prompt, "system": system,
                    "turns": turns, "meta": {"replies": replies} if replies else {}})
    for qid, doc, question, ref in QA:
        out.append({"suite": SUITE, "id": qid, "kind": "qa", "prompt": question, "system": SYS,
                    "document": doc, "reference": ref, "meta": {}})
    for qid, n, depth, fact, question, ref in LONG:
        out.append({"suite": SUITE, "id": qid, "kind": "long", "prompt": question, "system": SYS,
                    "document": long_doc(n, depth, fact), "reference": ref,
                    "meta": {"depth": depth, "fact": fact, "paragraphs": n + 1}})
    out.append({"suite": SUITE, "id": "prose-1", "kind": "prose", "prompt": "",
                "meta": {"file": "core-v1-prose.txt"}})
    return out


if __name__ == "__main__":
    dest = Path(__file__).resolve().parent.parent / "engine" / "bench" / "suites" / f"{SUITE}.jsonl"
    dest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records()), encoding="utf-8")
    print(f"wrote {dest}")
