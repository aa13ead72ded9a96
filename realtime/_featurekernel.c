/* The per-frame and per-window loops of realtime/features.py, compiled.
 *
 * The feature definition is realtime/features.py; its numpy code (FeatureExtractor with kernel=False) is the
 * reference this kernel is tested against (tests/test_features_kernel.py). Each loop here computes the same
 * quantity with the same float32 inputs; it differs from numpy only in rounding (sums accumulate in double,
 * not float32 pairwise), which moves a summary by ~1e-6 relative. It replaces ~60 numpy calls per hop, each
 * with a few microseconds of Python overhead, by ~10 calls. The FFTs and two matrix products (chroma, the
 * MFCC's DCT) stay in scipy / BLAS. Also the speech gate's two per-frame measures (realtime/vad.py).
 *
 * Interface: plain CPython, buffers through the buffer protocol (numpy arrays, C-contiguous), their types
 * and sizes checked (a ValueError naming the argument, never a read past a buffer); the per-frame loops
 * release the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_BANDS 16
#define MAX_NQ 32

typedef struct {
    Py_buffer view;
    int held;
} buf_t;

/* A C-contiguous buffer of at least count items of one type: 'f' float32, 'd' float64, 'q' int64, 'F'
 * complex64, 'h' int16 (numpy's formats f, d, l or q, Zf, h); anything else is a ValueError naming it. */
static int get_buf(PyObject *obj, buf_t *b, int writable, char type, Py_ssize_t count, const char *name) {
    b->held = 0;
    if (PyObject_GetBuffer(obj, &b->view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    b->held = 1;
    const char *fmt = b->view.format ? b->view.format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    Py_ssize_t itemsize = type == 'f' ? 4 : type == 'h' ? 2 : 8;
    const char *want = type == 'f' ? "f" : type == 'd' ? "d" : type == 'F' ? "Zf" : type == 'h' ? "h" : "q";
    const char *what = type == 'f'   ? "float32"
                       : type == 'd' ? "float64"
                       : type == 'F' ? "complex64"
                       : type == 'h' ? "int16"
                                     : "int64";
    int ok = strcmp(fmt, want) == 0 || (type == 'q' && strcmp(fmt, "l") == 0 && sizeof(long) == 8);
    if (!ok || b->view.itemsize != itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: %s values expected, got format '%s'", name, what, b->view.format);
        return -1;
    }
    if (b->view.len < itemsize * count) {
        PyErr_Format(PyExc_ValueError, "%s: %zd items expected, got %zd", name, count, b->view.len / itemsize);
        return -1;
    }
    return 0;
}

static void release(buf_t *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].view);
}

/* A sum of logarithms of positive normal doubles, exact up to double rounding and without a log per value:
 * mantissas (in [1, 2)) multiplied in four independent products, exponents added as integers, the products
 * renormalised every 1024 values (a product of 256 mantissas stays under 2^256). */
typedef struct {
    double prod[4];
    int64_t expo;
    Py_ssize_t n;
} logsum_t;

static inline void logsum_add(logsum_t *a, double v) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    a->expo += (int64_t)((bits >> 52) & 0x7ff) - 1023;
    bits = (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
    double m;
    memcpy(&m, &bits, 8);
    a->prod[a->n & 3] *= m;
    if ((++a->n & 1023) == 0)
        for (int j = 0; j < 4; j++) {
            int e;
            a->prod[j] = frexp(a->prod[j], &e);
            a->expo += e;
        }
}

static inline double logsum_value(const logsum_t *a) {
    return log(a->prod[0] * a->prod[1]) + log(a->prod[2] * a->prod[3]) + (double)a->expo * 0.69314718055994530942;
}

/* log(x) summed over n positive normal floats: the float exponent and mantissa bits, four products in
 * registers (n <= 1024: each product of at most 256 mantissas in [1, 2) stays under 2^256) */
static double log_sum(const float *x, Py_ssize_t n) {
    if (n > 1024) {
        logsum_t a = {{1.0, 1.0, 1.0, 1.0}, 0, 0};
        for (Py_ssize_t i = 0; i < n; i++) logsum_add(&a, (double)x[i]);
        return logsum_value(&a);
    }
    double p[4] = {1.0, 1.0, 1.0, 1.0};
    int64_t expo = 0;
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) {
            uint32_t bits;
            memcpy(&bits, &x[i + j], 4);
            expo += (int64_t)((bits >> 23) & 0xff) - 127;
            bits = (bits & 0x007fffffu) | 0x3f800000u;
            float m;
            memcpy(&m, &bits, 4);
            p[j] *= (double)m;
        }
    for (; i < n; i++) {
        int e;
        double m = frexp((double)x[i], &e);  /* m in [0.5, 1): times 2, e - 1 */
        p[0] *= 2.0 * m;
        expo += e - 1;
    }
    return log(p[0] * p[1]) + log(p[2] * p[3]) + (double)expo * 0.69314718055994530942;
}

/* log summed over the n values re^2 + im^2 + eps of c (complex64), and (*sum) their sum */
static double log_sum_power(const float *c, Py_ssize_t n, double eps, double *sum) {
    logsum_t a = {{1.0, 1.0, 1.0, 1.0}, 0, 0};
    double total = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double pw = (double)c[2 * i] * c[2 * i] + (double)c[2 * i + 1] * c[2 * i + 1] + eps;
        total += pw;
        logsum_add(&a, pw);
    }
    *sum = total;
    return logsum_value(&a);
}

/* insert v into the ascending lo[0..k) (keeps the k smallest) and the descending hi[0..k) (the k largest) */
static inline void insert_lo(float *lo, int k, float v) {
    if (!(v < lo[k - 1])) return;
    int j = k - 1;
    while (j > 0 && lo[j - 1] > v) { lo[j] = lo[j - 1]; j--; }
    lo[j] = v;
}

static inline void insert_hi(float *hi, int k, float v) {
    if (!(v > hi[k - 1])) return;
    int j = k - 1;
    while (j > 0 && hi[j - 1] < v) { hi[j] = hi[j - 1]; j--; }
    hi[j] = v;
}

/* Means of the n_q smallest (lo) and largest (hi) of x[0..n), n >= n_q: what numpy's mean of a sorted band's
 * first / last n_q values gives (the n_q values summed in ascending order in float32). One bin: min and max.
 * More: the n_q smallest and largest so far are kept sorted; a block of 8 values none of which could enter
 * either (one vectorised test) is skipped, the usual case once the first blocks are in. */
static void extremes_mean(const float *x, Py_ssize_t n, int n_q, double *lo_mean, double *hi_mean) {
    if (n_q == 1) {
        float mn = x[0], mx = x[0];
#pragma omp simd reduction(min : mn) reduction(max : mx)
        for (Py_ssize_t i = 1; i < n; i++) {
            mn = x[i] < mn ? x[i] : mn;
            mx = x[i] > mx ? x[i] : mx;
        }
        *lo_mean = mn;
        *hi_mean = mx;
        return;
    }
    float lo[MAX_NQ], hi[MAX_NQ];
    for (int j = 0; j < n_q; j++) { lo[j] = HUGE_VALF; hi[j] = -HUGE_VALF; }
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float *v = x + i;
        float tlo = lo[n_q - 1], thi = hi[n_q - 1];
        int enters = 0;
#pragma omp simd reduction(| : enters)
        for (int j = 0; j < 8; j++) enters |= (v[j] < tlo) | (v[j] > thi);
        if (!enters) continue;
        for (int j = 0; j < 8; j++) {
            insert_lo(lo, n_q, v[j]);
            insert_hi(hi, n_q, v[j]);
        }
    }
    for (; i < n; i++) {
        insert_lo(lo, n_q, x[i]);
        insert_hi(hi, n_q, x[i]);
    }
    float sl = 0.f, sh = 0.f;
    for (int j = 0; j < n_q; j++) sl += lo[j];
    for (int j = n_q - 1; j >= 0; j--) sh += hi[j];  /* ascending order of the largest n_q */
    *lo_mean = (double)(sl / (float)n_q);
    *hi_mean = (double)(sh / (float)n_q);
}

/* frames(x, index, out, win, zcr, T, n, hop, n_fft, zcr_threshold)
 * Frames of a window x (float32, n samples), centred: frame j = x[j * hop - n_fft / 2 ...] for j in index
 * (int64, T), zero-padded where it reaches past x, copied into out (float32 (T, n_fft)), times win (float32
 * n_fft) unless win is None. Unless zcr is None, also each frame's zero-crossing rate (float32 (T)) as librosa
 * counts it on the edge-padded frame: sign changes of x < -zcr_threshold, over n_fft. The edge padding repeats
 * the first / last sample, which adds no change, so the count runs over the frame's samples inside x. */
static PyObject *frames(PyObject *self, PyObject *args) {
    PyObject *o_x, *o_idx, *o_out, *o_win, *o_zcr;
    Py_ssize_t T, n, hop, nfft;
    double zthr;
    if (!PyArg_ParseTuple(args, "OOOOOnnnnd", &o_x, &o_idx, &o_out, &o_win, &o_zcr, &T, &n, &hop, &nfft, &zthr))
        return NULL;
    buf_t b[5];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    if (nfft < 2 || n < nfft || hop < 1) { PyErr_SetString(PyExc_ValueError, "frames: bad sizes"); goto done; }
    if (get_buf(o_x, &b[0], 0, 'f', n, "x") < 0 || get_buf(o_idx, &b[1], 0, 'q', T, "index") < 0 ||
        get_buf(o_out, &b[2], 1, 'f', T * nfft, "out") < 0 ||
        (o_win != Py_None && get_buf(o_win, &b[3], 0, 'f', nfft, "win") < 0) ||
        (o_zcr != Py_None && get_buf(o_zcr, &b[4], 1, 'f', T, "zcr") < 0))
        goto done;
    const float *x = b[0].view.buf, *win = b[3].held ? b[3].view.buf : NULL;
    const int64_t *idx = b[1].view.buf;
    float *out = b[2].view.buf, *zcr = b[4].held ? b[4].view.buf : NULL;
    const float zt = (float)zthr;
    for (Py_ssize_t t = 0; t < T; t++)
        if (idx[t] < 0 || idx[t] * hop > n) { PyErr_SetString(PyExc_ValueError, "frames: index past the window"); goto done; }
    for (Py_ssize_t t = 0; t < T; t++) {
        /* samples a + lo .. a + hi - 1 of x fill the frame's positions lo .. hi - 1 (0 < hi - lo) */
        Py_ssize_t a = idx[t] * hop - nfft / 2, lo = a < 0 ? -a : 0, hi = a + nfft > n ? n - a : nfft;
        float *o = out + t * nfft;
        const float *src = x + a;
        for (Py_ssize_t i = 0; i < lo; i++) o[i] = 0.f;
        if (win)
            for (Py_ssize_t i = lo; i < hi; i++) o[i] = src[i] * win[i];
        else
            memcpy(o + lo, src + lo, sizeof(float) * (hi - lo));
        for (Py_ssize_t i = hi; i < nfft; i++) o[i] = 0.f;
        if (zcr) {
            int changes = 0;
#pragma omp simd reduction(+ : changes)
            for (Py_ssize_t i = lo + 1; i < hi; i++) changes += (src[i] < -zt) != (src[i - 1] < -zt);
            zcr[t] = (float)changes / (float)nfft;
        }
    }
    ret = Py_NewRef(Py_None);
done:
    release(b, 5);
    return ret;
}

/* power(spec, out, n): out = |spec|^2 (float32) of n complex64 values */
static PyObject *power(PyObject *self, PyObject *args) {
    PyObject *o_spec, *o_out;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OOn", &o_spec, &o_out, &n)) return NULL;
    buf_t b[2];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    if (get_buf(o_spec, &b[0], 0, 'F', n, "spec") < 0 || get_buf(o_out, &b[1], 1, 'f', n, "out") < 0) goto done;
    const float *c = b[0].view.buf;
    float *o = b[1].view.buf;
    for (Py_ssize_t i = 0; i < n; i++) o[i] = c[2 * i] * c[2 * i] + c[2 * i + 1] * c[2 * i + 1];
    ret = Py_NewRef(Py_None);
done:
    release(b, 2);
    return ret;
}

/* spectral(spec, S, P, Q, D, zcr, freqs, band_starts, band_nq, rows, T, n_bins, n_fft, qcols, rolloff, flat_amin,
 *          db_amin)
 * spec: complex64 (T, n_bins). Writes S = |spec| (unless S is None) and P = S * S (float32, (T, n_bins)); into
 * Q (float32, rows x T) the rows rows[0..5] = centroid, bandwidth, rolloff, flatness, rms, zcr (the last copied
 * from zcr, float32 (T), as frames() counts it); into D (float64, (2 * nb, T)) the dB of each band's peak (rows
 * 0..nb-1) and valley (nb..2nb-1).
 * band_starts: int64 (nb), band k = bins [start_k, start_k+1) (the last to n_bins); band_nq: int64 (nb). */
static PyObject *spectral(PyObject *self, PyObject *args) {
    PyObject *o_spec, *o_S, *o_P, *o_Q, *o_D, *o_e, *o_freqs, *o_bs, *o_nq, *o_rows;
    Py_ssize_t T, nbins, nfft, qcols;
    double rolloff_pct, flat_amin, db_amin;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOnnnnddd", &o_spec, &o_S, &o_P, &o_Q, &o_D, &o_e, &o_freqs, &o_bs, &o_nq,
                          &o_rows, &T, &nbins, &nfft, &qcols, &rolloff_pct, &flat_amin, &db_amin))
        return NULL;
    buf_t b[10];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    if (get_buf(o_rows, &b[9], 0, 'q', 6, "rows") < 0 || get_buf(o_bs, &b[7], 0, 'q', 1, "band_starts") < 0)
        goto done;
    Py_ssize_t nb = b[7].view.len / 8;
    if (nb < 1 || nb > MAX_BANDS) { PyErr_SetString(PyExc_ValueError, "band_starts: 1..16 bands"); goto done; }
    const int64_t *rows = b[9].view.buf, *bs = b[7].view.buf;
    Py_ssize_t maxrow = 0;
    for (int i = 0; i < 6; i++) {
        if (rows[i] < 0) { PyErr_SetString(PyExc_ValueError, "rows: negative"); goto done; }
        if (rows[i] > maxrow) maxrow = rows[i];
    }
    if (get_buf(o_spec, &b[0], 0, 'F', T * nbins, "spec") < 0 || (o_S != Py_None && get_buf(o_S, &b[1], 1, 'f', T * nbins, "S") < 0) ||
        get_buf(o_P, &b[2], 1, 'f', T * nbins, "P") < 0 || get_buf(o_Q, &b[3], 1, 'f', (maxrow + 1) * qcols, "Q") < 0 ||
        get_buf(o_D, &b[4], 1, 'd', 2 * nb * T, "D") < 0 || get_buf(o_e, &b[5], 0, 'f', T, "zcr") < 0 ||
        get_buf(o_freqs, &b[6], 0, 'f', nbins, "freqs") < 0 || get_buf(o_nq, &b[8], 0, 'q', nb, "band_nq") < 0)
        goto done;
    if (T > qcols) { PyErr_SetString(PyExc_ValueError, "Q has fewer columns than frames"); goto done; }
    const int64_t *nq = b[8].view.buf;
    for (Py_ssize_t k = 0; k < nb; k++) {
        Py_ssize_t a = bs[k], e = k + 1 < nb ? bs[k + 1] : nbins;
        if (a < 0 || e > nbins || e <= a || nq[k] < 1 || nq[k] > MAX_NQ || nq[k] > e - a) {
            PyErr_SetString(PyExc_ValueError, "contrast bands must tile the bins, each quantile 1..32 bins");
            goto done;
        }
    }
    const float *spec = b[0].view.buf, *zcr = b[5].view.buf, *freqs = b[6].view.buf;
    float *S = b[1].held ? b[1].view.buf : NULL, *P = b[2].view.buf, *Q = b[3].view.buf;
    double *D = b[4].view.buf;
    const float famin = (float)flat_amin, tiny = 1.17549435e-38f;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    float *Sp = PyMem_RawMalloc(sizeof(float) * 2 * nbins), *scratch = Sp + nbins;  /* S of one frame if not kept */
    for (Py_ssize_t t = 0; t < T && Sp; t++) {
        const float *sp = spec + 2 * t * nbins;
        float *s = S ? S + t * nbins : scratch, *p = P + t * nbins;
        /* simple loops the compiler vectorises; the sums in double, their order free (omp simd reduction) */
        for (Py_ssize_t f = 0; f < nbins; f++) {
            float re = sp[2 * f], im = sp[2 * f + 1];
            s[f] = sqrtf(re * re + im * im);
            p[f] = s[f] * s[f];
            Sp[f] = p[f] > famin ? p[f] : famin;
        }
        double total = 0.0, wsum = 0.0, psum = 0.0, spsum = 0.0;
#pragma omp simd reduction(+ : total, wsum, psum, spsum)
        for (Py_ssize_t f = 0; f < nbins; f++) {
            total += s[f];
            wsum += (double)s[f] * freqs[f];
            psum += p[f];
            spsum += Sp[f];
        }
        double norm = total > tiny ? total : 1.0;
        double centroid = wsum / norm, var = 0.0;
#pragma omp simd reduction(+ : var)
        for (Py_ssize_t f = 0; f < nbins; f++) {
            double dv = freqs[f] - centroid;
            var += s[f] * dv * dv;
        }
        var /= norm;
        /* rolloff: the first bin where numpy's float32 cumulative sum (sequential) reaches fl32(rolloff_pct) times
         * its last value. Found in double from 8-bin block sums (vectorised). A float32 running sum of n >= 0
         * terms is within (n - 1) 2^-24 of the total of the exact one (3.1e-5 for 513 bins), and the float32
         * threshold within 0.85 of that again: where the double sums pass the threshold within 6e-5 of the
         * total the float32 sums decide, bin by bin, so the bin is numpy's in every frame. */
        double thresh = rolloff_pct * total, csum = 0.0, margin = (2.0 * (nbins - 1) * 5.96e-8 + 1e-7) * total;
        Py_ssize_t roll = nbins - 1, f0 = 0;
        for (; f0 + 8 <= nbins; f0 += 8) {
            double blk = 0.0;
            for (int j = 0; j < 8; j++) blk += s[f0 + j];
            if (csum + blk >= thresh) break;
            csum += blk;
        }
        double before = csum;
        for (Py_ssize_t f = f0; f < nbins; f++) {
            csum += s[f];
            if (csum >= thresh) { roll = f; break; }
            before = csum;
        }
        if (csum - thresh < margin || thresh - before < margin) {
            float total_f = 0.f, cs = 0.f;
            for (Py_ssize_t f = 0; f < nbins; f++) total_f += s[f];
            float thresh_f = (float)rolloff_pct * total_f;
            roll = 0;
            for (Py_ssize_t f = 0; f < nbins; f++) {
                cs += s[f];
                if (cs >= thresh_f) { roll = f; break; }
            }
        }
        psum -= 0.5 * p[0];
        if (nfft % 2 == 0) psum -= 0.5 * p[nbins - 1];
        Q[rows[0] * qcols + t] = (float)centroid;
        Q[rows[1] * qcols + t] = (float)sqrt(var);
        Q[rows[2] * qcols + t] = freqs[roll];
        Q[rows[3] * qcols + t] = (float)(exp(log_sum(Sp, nbins) / nbins) / (spsum / nbins));
        Q[rows[4] * qcols + t] = (float)sqrt(2.0 * psum / ((double)nfft * nfft));
        Q[rows[5] * qcols + t] = zcr[t];
        for (Py_ssize_t k = 0; k < nb; k++) {
            Py_ssize_t a = bs[k], e = k + 1 < nb ? bs[k + 1] : nbins;
            double lo, hi;
            extremes_mean(s + a, e - a, (int)nq[k], &lo, &hi);
            D[k * T + t] = 10.0 * log10(hi > db_amin ? hi : db_amin);
            D[(nb + k) * T + t] = 10.0 * log10(lo > db_amin ? lo : db_amin);
        }
    }
    failed = Sp == NULL;
    PyMem_RawFree(Sp);
    Py_END_ALLOW_THREADS
    if (failed) { PyErr_NoMemory(); goto done; }
    ret = Py_NewRef(Py_None);
done:
    release(b, 10);
    return ret;
}

/* mel(P, weights, first, count, offset, M, T, n_bins, n_mels)
 * The mel filterbank product P @ mel.T, filter by filter over its nonzero bins only (a triangle covers a few
 * bins): P float32 (T, n_bins); filter k has count[k] weights (float32, at weights[offset[k]..]) for the bins
 * first[k]..; M float32 (T, n_mels). */
static PyObject *mel(PyObject *self, PyObject *args) {
    PyObject *o_P, *o_w, *o_first, *o_count, *o_off, *o_M;
    Py_ssize_t T, nbins, nmels;
    if (!PyArg_ParseTuple(args, "OOOOOOnnn", &o_P, &o_w, &o_first, &o_count, &o_off, &o_M, &T, &nbins, &nmels))
        return NULL;
    buf_t b[6];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    if (get_buf(o_P, &b[0], 0, 'f', T * nbins, "P") < 0 || get_buf(o_w, &b[1], 0, 'f', 1, "weights") < 0 ||
        get_buf(o_first, &b[2], 0, 'q', nmels, "first") < 0 || get_buf(o_count, &b[3], 0, 'q', nmels, "count") < 0 ||
        get_buf(o_off, &b[4], 0, 'q', nmels, "offset") < 0 || get_buf(o_M, &b[5], 1, 'f', T * nmels, "M") < 0)
        goto done;
    const int64_t *first = b[2].view.buf, *count = b[3].view.buf, *off = b[4].view.buf;
    Py_ssize_t nw = b[1].view.len / 4;
    for (Py_ssize_t k = 0; k < nmels; k++)
        if (first[k] < 0 || count[k] < 0 || first[k] + count[k] > nbins || off[k] < 0 || off[k] + count[k] > nw) {
            PyErr_SetString(PyExc_ValueError, "mel: a filter reaches past the bins or the weights");
            goto done;
        }
    const float *P = b[0].view.buf, *w = b[1].view.buf;
    float *M = b[5].view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < T; t++) {
        const float *p = P + t * nbins;
        for (Py_ssize_t k = 0; k < nmels; k++) {
            const float *pk = p + first[k], *wk = w + off[k];
            float acc = 0.f;  /* a few dozen terms at most: float lanes, order free */
#pragma omp simd reduction(+ : acc)
            for (Py_ssize_t j = 0; j < count[k]; j++) acc += pk[j] * wk[j];
            M[t * nmels + k] = acc;
        }
    }
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    release(b, 6);
    return ret;
}

/* bands(M, C, tonnetz, Q, mel_row, tonnetz_row, T, n_mels, n_chroma, qcols, db_amin)
 * M: float32 (T, n_mels) mel power -> Q rows mel_row.. (dB, 10 log10 max(amin, M)); C: float32 (T, n_chroma)
 * chroma -> normalised by its max, then L1, projected by tonnetz (float32 (6, n_chroma)) -> Q rows tonnetz_row.. */
static PyObject *bands(PyObject *self, PyObject *args) {
    PyObject *o_M, *o_C, *o_tz, *o_Q;
    Py_ssize_t mel_row, tz_row, T, nmels, nchroma, qcols;
    double db_amin;
    if (!PyArg_ParseTuple(args, "OOOOnnnnnnd", &o_M, &o_C, &o_tz, &o_Q, &mel_row, &tz_row, &T, &nmels, &nchroma,
                          &qcols, &db_amin))
        return NULL;
    buf_t b[4];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    Py_ssize_t need = (mel_row + nmels > tz_row + 6 ? mel_row + nmels : tz_row + 6) * qcols;
    if (mel_row < 0 || tz_row < 0 || T > qcols || nchroma < 1 || nchroma > 64) {
        PyErr_SetString(PyExc_ValueError, "bands: bad rows or sizes");
        goto done;
    }
    if (get_buf(o_M, &b[0], 0, 'f', T * nmels, "M") < 0 || get_buf(o_C, &b[1], 0, 'f', T * nchroma, "C") < 0 ||
        get_buf(o_tz, &b[2], 0, 'f', 6 * nchroma, "tonnetz") < 0 || get_buf(o_Q, &b[3], 1, 'f', need, "Q") < 0)
        goto done;
    const float *M = b[0].view.buf, *C = b[1].view.buf, *tzm = b[2].view.buf;
    float *Q = b[3].view.buf;
    const float amin = (float)db_amin, tiny = 1.17549435e-38f;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < T; t++) {
        const float *m = M + t * nmels, *c = C + t * nchroma;
        for (Py_ssize_t j = 0; j < nmels; j++)
            Q[(mel_row + j) * qcols + t] = 10.0f * log10f(m[j] > amin ? m[j] : amin);
        float cmax = 0.f, cn[64];
        for (Py_ssize_t j = 0; j < nchroma; j++) cmax = fabsf(c[j]) > cmax ? fabsf(c[j]) : cmax;
        float den = cmax > tiny ? cmax : 1.0f, l1 = 0.f;
        for (Py_ssize_t j = 0; j < nchroma; j++) { cn[j] = c[j] / den; l1 += fabsf(cn[j]); }
        float den1 = l1 > tiny ? l1 : 1.0f;
        for (int r = 0; r < 6; r++) {
            float acc = 0.f;
            for (Py_ssize_t j = 0; j < nchroma; j++) acc += cn[j] / den1 * tzm[r * nchroma + j];
            Q[(tz_row + r) * qcols + t] = acc;
        }
    }
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    release(b, 4);
    return ret;
}

/* yin(acf, frames, f0, periodicity, T, acf_stride, frame_len, lo, hi, trough_threshold, sr)
 * acf: float32 (T, acf_stride), lags 0..hi used; frames: float32 (T, frame_len), the pitch frames. librosa.yin's
 * difference function, cumulative mean normalisation, first trough under the threshold (else the global
 * minimum), parabolic interpolation at it; f0 and 1 - min CMNDF (float32, T each). float32 arithmetic in numpy's
 * order (cumulative sums are sequential in both). */
static PyObject *yin(PyObject *self, PyObject *args) {
    PyObject *o_acf, *o_fr, *o_f0, *o_per;
    Py_ssize_t T, astride, flen, lo, hi;
    double thr, sr;
    if (!PyArg_ParseTuple(args, "OOOOnnnnndd", &o_acf, &o_fr, &o_f0, &o_per, &T, &astride, &flen, &lo, &hi, &thr, &sr))
        return NULL;
    buf_t b[4];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    if (lo < 1 || hi <= lo + 2 || hi >= astride || hi > flen) {
        PyErr_SetString(PyExc_ValueError, "yin: need 1 <= lo < hi - 2, hi < acf length, hi <= frame length");
        goto done;
    }
    if (get_buf(o_acf, &b[0], 0, 'f', T * astride, "acf") < 0 || get_buf(o_fr, &b[1], 0, 'f', T * flen, "frames") < 0 ||
        get_buf(o_f0, &b[2], 1, 'f', T, "f0") < 0 || get_buf(o_per, &b[3], 1, 'f', T, "periodicity") < 0)
        goto done;
    const float *A = b[0].view.buf, *X = b[1].view.buf;
    float *f0 = b[2].view.buf, *per = b[3].view.buf;
    const float tiny = 1.17549435e-38f, fthr = (float)thr;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t K = hi - lo + 1;
    float *cm = PyMem_RawMalloc(sizeof(float) * K);
    failed = cm == NULL;
    for (Py_ssize_t t = 0; t < T && cm; t++) {
        const float *acf = A + t * astride, *x = X + t * flen;
        /* lag k subtracts energy[k-1], numpy's float32 cumsum of x^2 (sequential) with energy[0] zeroed */
        float energy = x[0] * x[0], csum = 0.f;
        for (Py_ssize_t k = 1; k <= hi; k++) {
            if (k >= 2) energy += x[k - 1] * x[k - 1];
            float dk = 2.0f * (acf[0] - acf[k]) - (k == 1 ? 0.f : energy);
            csum += dk;
            if (k >= lo) {
                float cmean = csum / (float)k;
                cm[k - lo] = dk / (cmean + tiny);
            }
        }
        Py_ssize_t period = -1, amin = 0;
        for (Py_ssize_t i = 0; i < K; i++) {
            if (cm[i] < cm[amin]) amin = i;
            if (period < 0 && cm[i] < fthr) {
                int trough;
                if (i == 0) trough = cm[0] < cm[1];
                else if (i == K - 1) trough = cm[i] < cm[i - 1];
                else trough = cm[i] < cm[i - 1] && cm[i] <= cm[i + 1];
                if (trough) period = i;
            }
        }
        if (period < 0) period = amin;
        double shift = 0.0;
        if (period >= 1 && period <= K - 2) {
            float c0 = cm[period - 1], c1 = cm[period], c2 = cm[period + 1];
            float a = c2 + c0 - 2 * c1, bb = (c2 - c0) / 2;
            if (fabsf(bb) < fabsf(a)) shift = -bb / a;
        }
        f0[t] = (float)(sr / ((double)(lo + period) + shift));
        float c = cm[period];
        per[t] = 1.0f - (c < 0.f ? 0.f : c > 1.f ? 1.f : c);
    }
    PyMem_RawFree(cm);
    Py_END_ALLOW_THREADS
    if (failed) { PyErr_NoMemory(); goto done; }
    ret = Py_NewRef(Py_None);
done:
    release(b, 4);
    return ret;
}

/* mean, min, max, std (population) of x[0..n), in double */
static void row_summary(const float *x, Py_ssize_t n, double out[4]) {
    double s = 0.0, mn = x[0], mx = x[0];
    for (Py_ssize_t i = 0; i < n; i++) {
        s += x[i];
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    double mean = s / n, v = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) v += (x[i] - mean) * (x[i] - mean);
    out[0] = mean;
    out[1] = mn;
    out[2] = mx;
    out[3] = sqrt(v / n);
}

/* np.percentile(a, 100 q), method 'linear', of sorted a[0..n) */
static double percentile(const float *a, Py_ssize_t n, double q) {
    double vi = (n - 1) * q;
    Py_ssize_t prev = (Py_ssize_t)vi, nxt = prev + 1 < n ? prev + 1 : n - 1;
    double g = vi - prev, lo = a[prev], hi = a[nxt], diff = (double)(a[nxt] - a[prev]);
    return g >= 0.5 ? hi - diff * (1 - g) : lo + diff * g;
}

/* assemble(Q, mfcc, f0, periodicity, cols, out, T, n_summarised, n_coeffs, n_pitch, fmin, fmax, voicing_threshold)
 * The stats vector of one window (realtime.features.FeatureExtractor._assemble) into out (float32):
 * for each of the first n_summarised rows of Q (float32 (rows, T)) the summaries cols (int64: 0 mean, 1 min,
 * 2 max, 3 std) in that order; then the pitch summary of the n_pitch frames (f0, periodicity float32):
 * median, mean, std, p10 and p90 of log2 F0 over the voiced frames (periodicity > 1 - voicing_threshold, F0 in
 * [fmin, fmax]; all 0 with fewer than 3), voiced fraction, mean periodicity; then mean and std of each of the
 * first n_coeffs rows of mfcc (float32 (rows, T)). */
static PyObject *assemble(PyObject *self, PyObject *args) {
    PyObject *o_Q, *o_m, *o_f0, *o_per, *o_cols, *o_out;
    Py_ssize_t T, nsum, ncoef, np_;
    double fmin, fmax, vthr;
    if (!PyArg_ParseTuple(args, "OOOOOOnnnnddd", &o_Q, &o_m, &o_f0, &o_per, &o_cols, &o_out, &T, &nsum, &ncoef, &np_,
                          &fmin, &fmax, &vthr))
        return NULL;
    buf_t b[6];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    float sorted[1024];
    if (T < 1 || np_ < 1 || np_ > 1024) { PyErr_SetString(PyExc_ValueError, "assemble: 1..1024 pitch frames, T >= 1"); goto done; }
    if (get_buf(o_cols, &b[4], 0, 'q', 1, "cols") < 0) goto done;
    Py_ssize_t k = b[4].view.len / 8;
    const int64_t *cols = b[4].view.buf;
    for (Py_ssize_t j = 0; j < k; j++)
        if (cols[j] < 0 || cols[j] > 3) { PyErr_SetString(PyExc_ValueError, "cols: 0..3"); goto done; }
    if (get_buf(o_Q, &b[0], 0, 'f', nsum * T, "Q") < 0 || get_buf(o_m, &b[1], 0, 'f', ncoef * T, "mfcc") < 0 ||
        get_buf(o_f0, &b[2], 0, 'f', np_, "f0") < 0 || get_buf(o_per, &b[3], 0, 'f', np_, "periodicity") < 0 ||
        get_buf(o_out, &b[5], 1, 'f', nsum * k + 7 + 2 * ncoef, "out") < 0)
        goto done;
    const float *Q = b[0].view.buf, *M = b[1].view.buf, *f0 = b[2].view.buf, *per = b[3].view.buf;
    float *out = b[5].view.buf;
    double sm[4];
    for (Py_ssize_t r = 0; r < nsum; r++) {
        row_summary(Q + r * T, T, sm);
        for (Py_ssize_t j = 0; j < k; j++) *out++ = (float)sm[cols[j]];
    }
    const float vmin = (float)(1.0 - vthr), lo = (float)fmin, hi = (float)fmax;
    Py_ssize_t nv = 0;
    double psum = 0.0;
    for (Py_ssize_t i = 0; i < np_; i++) {
        psum += per[i];
        if (per[i] > vmin && f0[i] >= lo && f0[i] <= hi) { /* insertion sort of log2 F0 */
            float v = (float)log2((double)f0[i]);
            Py_ssize_t j = nv++;
            while (j > 0 && sorted[j - 1] > v) { sorted[j] = sorted[j - 1]; j--; }
            sorted[j] = v;
        }
    }
    if (nv < 3) {
        for (int j = 0; j < 5; j++) *out++ = 0.f;
    } else {
        double lm[4];
        row_summary(sorted, nv, lm);
        *out++ = (float)percentile(sorted, nv, 0.5);
        *out++ = (float)lm[0];
        *out++ = (float)lm[3];
        *out++ = (float)percentile(sorted, nv, 0.1);
        *out++ = (float)percentile(sorted, nv, 0.9);
    }
    *out++ = (float)((double)nv / np_);
    *out++ = (float)(psum / np_);
    for (Py_ssize_t r = 0; r < ncoef; r++) {
        row_summary(M + r * T, T, sm);
        *out++ = (float)sm[0];
        *out++ = (float)sm[3];
    }
    ret = Py_NewRef(Py_None);
done:
    release(b, 6);
    return ret;
}

/* vad_measures(frames, spec, mean_square, flatness, T, n, n_bins, lo, eps)
 * The speech gate's two checks per frame (realtime/vad.py): mean square of the float32 samples (T, n), and the
 * spectral flatness (geometric / arithmetic mean) of the power + eps of spec (complex64 (T, n_bins)) from bin lo
 * up. Both float64 (T). */
static PyObject *vad_measures(PyObject *self, PyObject *args) {
    PyObject *o_fr, *o_spec, *o_ms, *o_fl;
    Py_ssize_t T, n, nbins, lo;
    double eps;
    if (!PyArg_ParseTuple(args, "OOOOnnnnd", &o_fr, &o_spec, &o_ms, &o_fl, &T, &n, &nbins, &lo, &eps)) return NULL;
    buf_t b[4];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    if (lo < 0 || lo >= nbins || n < 1) { PyErr_SetString(PyExc_ValueError, "vad_measures: bad sizes"); goto done; }
    if (get_buf(o_fr, &b[0], 0, 'f', T * n, "frames") < 0 || get_buf(o_spec, &b[1], 0, 'F', T * nbins, "spec") < 0 ||
        get_buf(o_ms, &b[2], 1, 'd', T, "mean_square") < 0 || get_buf(o_fl, &b[3], 1, 'd', T, "flatness") < 0)
        goto done;
    const float *X = b[0].view.buf, *sp = b[1].view.buf;
    double *ms = b[2].view.buf, *fl = b[3].view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < T; t++) {
        const float *x = X + t * n, *c = sp + 2 * t * nbins;
        double e = 0.0, psum;
#pragma omp simd reduction(+ : e)
        for (Py_ssize_t i = 0; i < n; i++) e += (double)x[i] * x[i];
        double lsum = log_sum_power(c + 2 * lo, nbins - lo, eps, &psum);
        ms[t] = e / n;
        fl[t] = exp(lsum / (nbins - lo)) / (psum / (nbins - lo));
    }
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    release(b, 4);
    return ret;
}

/* to_s16(x, out, n): float32 samples -> int16 PCM as realtime.audio.float_to_s16 makes it (clipped to [-1, 1],
 * times 32767 in float32, truncated toward zero), for webrtcvad */
static PyObject *to_s16(PyObject *self, PyObject *args) {
    PyObject *o_x, *o_out;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OOn", &o_x, &o_out, &n)) return NULL;
    buf_t b[2];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    if (get_buf(o_x, &b[0], 0, 'f', n, "x") < 0 || get_buf(o_out, &b[1], 1, 'h', n, "out") < 0) goto done;
    const float *x = b[0].view.buf;
    int16_t *o = b[1].view.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        float v = x[i] < -1.f ? -1.f : x[i] > 1.f ? 1.f : x[i];
        o[i] = (int16_t)(v * 32767.0f);
    }
    ret = Py_NewRef(Py_None);
done:
    release(b, 2);
    return ret;
}

static PyMethodDef methods[] = {
    {"spectral", spectral, METH_VARARGS, "Per-frame magnitude, power and spectral quantities (see the source)."},
    {"frames", frames, METH_VARARGS, "Centred frames of a window by index, windowed, and their zero-crossing rates."},
    {"power", power, METH_VARARGS, "The power of complex64 values."},
    {"mel", mel, METH_VARARGS, "The mel filterbank product over each filter's nonzero bins."},
    {"bands", bands, METH_VARARGS, "Mel dB and tonnetz rows from the mel and chroma products."},
    {"yin", yin, METH_VARARGS, "YIN F0 and periodicity from the autocorrelation of the pitch frames."},
    {"assemble", assemble, METH_VARARGS, "The stats vector of one window from its per-frame rows (see the source)."},
    {"to_s16", to_s16, METH_VARARGS, "float32 samples to int16 PCM, as realtime.audio.float_to_s16."},
    {"vad_measures", vad_measures, METH_VARARGS, "The speech gate's mean square and spectral flatness per frame."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_featurekernel",
                                    "Compiled loops of realtime.features (the numpy code there is the reference).",
                                    -1, methods};

/* The calling convention's version: realtime/features.py uses the module only when it matches its own
 * KERNEL_VERSION (an extension built from older sources, left behind by a checkout that was not reinstalled,
 * is ignored, with a warning, rather than called with the wrong arguments). Bump both on any change of a
 * function's arguments or of what it computes. */
#define KERNEL_VERSION 1

PyMODINIT_FUNC PyInit__featurekernel(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "VERSION", KERNEL_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
