/* One batch-1 decode step of a Llama-family model (fp32, CPU), the whole layer loop in one
 * OpenMP parallel region. Built at run time by engine/lm/nativestep.py and called through ctypes;
 * the maths is that of engine/lm/fastdecode.py (see docs/native-decode.md for why it exists and
 * how exact it is).
 *
 * Why one region: in torch a step is ~700 ops, each a Python call, a dispatch and (for every
 * product) an OpenMP fork/join. Here the threads are started once per step and meet at a
 * barrier between dependent stages; each matrix-vector product gives each thread a block of
 * output rows, so every weight byte is read once, by one core, in row order.
 *
 * Layout (all contiguous, row-major): weights (N, K) as torch stores nn.Linear weights; the KV
 * buffer (layers, 2, 1, kv_heads, cap, head_dim); the rotation table row of this position
 * (2, 2, head_dim/2) as engine/lm/fastdecode.rope_table builds it.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <omp.h>

typedef struct {
    int n_layers, hidden, inter, n_heads, n_kv, head_dim, vocab;
    float eps, scale;
    const float *embed, *final_norm, *w_head, *b_head;
    const float **ln1, **ln2, **wqkv, **bqkv, **wo, **bo, **wgu, **bgu, **wd, **bd;
} Model;

/* y[r] = dot(W[r], x) (+ b[r]) (+ y[r] when acc) for rows [r0, r1): four rows at a time so
 * four weight streams are in flight; the sum over k is vectorised (omp simd). */
static void gemv(const float *W, int K, const float *x, const float *b, float *y, int r0, int r1, int acc) {
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        const float *w0 = W + (int64_t)r * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (int k = 0; k < K; k++) {
            float xv = x[k];
            a0 += w0[k] * xv;
            a1 += w1[k] * xv;
            a2 += w2[k] * xv;
            a3 += w3[k] * xv;
        }
        if (b) { a0 += b[r]; a1 += b[r + 1]; a2 += b[r + 2]; a3 += b[r + 3]; }
        if (acc) { y[r] += a0; y[r + 1] += a1; y[r + 2] += a2; y[r + 3] += a3; }
        else { y[r] = a0; y[r + 1] = a1; y[r + 2] = a2; y[r + 3] = a3; }
    }
    for (; r < r1; r++) {
        const float *w0 = W + (int64_t)r * K;
        float a0 = 0.f;
#pragma omp simd reduction(+ : a0)
        for (int k = 0; k < K; k++) a0 += w0[k] * x[k];
        if (b) a0 += b[r];
        if (acc) y[r] += a0; else y[r] = a0;
    }
}

/* This thread's block of n rows (multiples of 4, so blocks never split a 4-row group). */
static void block(int n, int *r0, int *r1) {
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    int per = ((n + T - 1) / T + 3) & ~3;
    int a = t * per, z = a + per;
    *r0 = a < n ? a : n;
    *r1 = z < n ? z : n;
}

/* h = w * (x * rsqrt(mean(x²) + eps)) */
static void rmsnorm(const float *x, const float *w, float *h, int n, float eps) {
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) h[i] = w[i] * (x[i] * r);
}

/* In place: each head of d values [x1, x2] -> [x1*T00 + x2*T01, x1*T10 + x2*T11]. */
static void rope(float *x, int heads, int d, const float *T) {
    int h2 = d / 2;
    const float *t00 = T, *t01 = T + h2, *t10 = T + 2 * h2, *t11 = T + 3 * h2;
    for (int hd = 0; hd < heads; hd++) {
        float *a = x + hd * d, *b = a + h2;
        for (int i = 0; i < h2; i++) {
            float x1 = a[i], x2 = b[i];
            a[i] = x1 * t00[i] + x2 * t01[i];
            b[i] = x1 * t10[i] + x2 * t11[i];
        }
    }
}

/* One query head over the ``past`` cached positions and the new one (``kn``, ``vn``: this step's
 * key and value, not read back from the cache): out = softmax(q·K * scale) V. */
static void attend(const float *q, const float *K, const float *V, int past, const float *kn,
                   const float *vn, int d, float scale, float *sc, float *out) {
    float mx = -INFINITY;
    for (int j = 0; j <= past; j++) {
        const float *k = j < past ? K + (int64_t)j * d : kn;
        float a = 0.f;
#pragma omp simd reduction(+ : a)
        for (int i = 0; i < d; i++) a += q[i] * k[i];
        a *= scale;
        sc[j] = a;
        if (a > mx) mx = a;
    }
    float sum = 0.f;
    for (int j = 0; j <= past; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
    float inv = 1.0f / sum;
    for (int i = 0; i < d; i++) out[i] = 0.f;
    for (int j = 0; j <= past; j++) {
        const float *v = j < past ? V + (int64_t)j * d : vn;
        float p = sc[j] * inv;
#pragma omp simd
        for (int i = 0; i < d; i++) out[i] += p * v[i];
    }
}

/* The step. ``tok``: the new token id; ``kv``: the cache buffer, positions [0, past) filled,
 * position ``past`` written here; ``rot``: the rotation table row of position ``past``;
 * ``work``: scratch of at least tf_work_floats(m, past + 1, threads) floats; ``out``: the final
 * hidden state (hidden floats); ``logits``: NULL, or the head's output (vocab floats).
 *
 * Five barriers a layer, one after each stage whose output another thread reads: every thread
 * norms the whole residual into its own buffer (576 values: cheaper than a barrier), rotates its
 * own copy of the new keys, writes the cache slots of the KV heads it owns and attends for its
 * own query heads, reading the new key and value from its copy (the slot another thread writes
 * is never read in the same step). */
void tf_decode_step(const Model *m, int64_t tok, float *kv, int cap, int past, const float *rot,
                    float *work, float *out, float *logits, int threads) {
    const int H = m->hidden, I = m->inter, nh = m->n_heads, nkv = m->n_kv, d = m->head_dim;
    const int qd = nh * d, kd = nkv * d, nqkv = qd + 2 * kd, s = past + 1, group = nh / nkv;
    float *x = work, *qkv = x + H, *a = qkv + nqkv, *mm = a + qd, *up = mm + I, *sc = up + I;
    float *priv = sc + (int64_t)nh * s;  /* per thread: normed input (H) and rotated new keys (kd) */
    const int64_t head_stride = (int64_t)cap * d, kv_stride = nkv * head_stride, layer_stride = 2 * kv_stride;
    const float *e = m->embed + tok * H;
    for (int i = 0; i < H; i++) x[i] = e[i];
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        float *h = priv + (int64_t)t * (H + kd), *kn = h + H;
        int r0, r1;
        for (int l = 0; l < m->n_layers; l++) {
            float *K = kv + l * layer_stride, *V = K + kv_stride;
            rmsnorm(x, m->ln1[l], h, H, m->eps);
            block(nqkv, &r0, &r1);
            gemv(m->wqkv[l], H, h, m->bqkv[l], qkv, r0, r1, 0);
#pragma omp barrier
            const float *vn = qkv + qd + kd;
            for (int i = 0; i < kd; i++) kn[i] = qkv[qd + i];
            rope(kn, nkv, d, rot);
            for (int g = t; g < nkv; g += T) {
                float *ks = K + g * head_stride + (int64_t)past * d, *vs = V + g * head_stride + (int64_t)past * d;
                for (int i = 0; i < d; i++) { ks[i] = kn[g * d + i]; vs[i] = vn[g * d + i]; }
            }
            for (int hd = t; hd < nh; hd += T) {
                int g = hd / group;
                rope(qkv + hd * d, 1, d, rot);
                attend(qkv + hd * d, K + g * head_stride, V + g * head_stride, past, kn + g * d, vn + g * d,
                       d, m->scale, sc + (int64_t)hd * s, a + hd * d);
            }
#pragma omp barrier
            block(H, &r0, &r1);
            gemv(m->wo[l], qd, a, m->bo[l], x, r0, r1, 1);
#pragma omp barrier
            rmsnorm(x, m->ln2[l], h, H, m->eps);
            /* a thread's gate and up rows have the same indices: silu(g) * u needs no barrier */
            block(I, &r0, &r1);
            {
                const float *Wg = m->wgu[l], *Wu = Wg + (int64_t)I * H;
                const float *bg = m->bgu[l], *bu = bg ? bg + I : NULL;
                gemv(Wg, H, h, bg, mm, r0, r1, 0);
                gemv(Wu, H, h, bu, up, r0, r1, 0);
                for (int j = r0; j < r1; j++) {
                    float gv = mm[j];
                    mm[j] = gv / (1.0f + expf(-gv)) * up[j];
                }
            }
#pragma omp barrier
            block(H, &r0, &r1);
            gemv(m->wd[l], I, mm, m->bd[l], x, r0, r1, 1);
#pragma omp barrier
        }
        if (logits) {  /* the LM head in the same region: each thread its block of the vocabulary */
            rmsnorm(x, m->final_norm, h, H, m->eps);
            block(m->vocab, &r0, &r1);
            gemv(m->w_head, H, h, m->b_head, logits, r0, r1, 0);
        }
    }
    rmsnorm(x, m->final_norm, out, H, m->eps);
}

/* Floats of scratch ``tf_decode_step`` needs for ``s`` keys on ``threads`` threads. */
int64_t tf_work_floats(const Model *m, int s, int threads) {
    int64_t qd = (int64_t)m->n_heads * m->head_dim, kd = (int64_t)m->n_kv * m->head_dim;
    return m->hidden + (qd + 2 * kd) + qd + 2 * (int64_t)m->inter + (int64_t)m->n_heads * s
           + (int64_t)threads * (m->hidden + kd);
}
