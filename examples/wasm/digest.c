/* SHA-256 (FIPS 180-4) and Fibonacci numbers, for a Worker to call.
 *
 * Freestanding: no libc, no imports. The worker writes its input into the
 * buffer at input() and calls sha256(length), which leaves the 32-byte digest
 * at digest(). Built by build.sh into digest.wasm.
 */
typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

#define EXPORT(name) __attribute__((export_name(name)))
#define INPUT_CAPACITY (1 << 20)

static u8 input_buffer[INPUT_CAPACITY];
static u8 digest_buffer[32];

static const u32 K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* clang turns zeroing loops into memset calls; with no libc, this is it. */
void *memset(void *destination, int value, unsigned long count) {
    u8 *p = destination;
    while (count--) *p++ = (u8)value;
    return destination;
}

static u32 rotr(u32 x, u32 n) { return (x >> n) | (x << (32 - n)); }

static void compress(u32 state[8], const u8 block[64]) {
    u32 w[64];
    for (int i = 0; i < 16; i++) {
        w[i] = (u32)block[4 * i] << 24 | (u32)block[4 * i + 1] << 16 | (u32)block[4 * i + 2] << 8 | block[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
        u32 s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        u32 s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    u32 a = state[0], b = state[1], c = state[2], d = state[3];
    u32 e = state[4], f = state[5], g = state[6], h = state[7];
    for (int i = 0; i < 64; i++) {
        u32 t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        u32 t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    state[0] += a; state[1] += b; state[2] += c; state[3] += d;
    state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

EXPORT("input") u8 *input(void) { return input_buffer; }
EXPORT("input_capacity") u32 input_capacity(void) { return INPUT_CAPACITY; }
EXPORT("digest") u8 *digest(void) { return digest_buffer; }

/* Hashes the first `length` bytes of the input buffer; 0 if length is too large. */
EXPORT("sha256") int sha256(u32 length) {
    if (length > INPUT_CAPACITY) return 0;
    u32 state[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    u32 done = 0;
    for (; length - done >= 64; done += 64) compress(state, input_buffer + done);
    u8 tail[128] = {0};
    u32 rest = length - done;
    for (u32 i = 0; i < rest; i++) tail[i] = input_buffer[done + i];
    tail[rest] = 0x80;
    u32 tail_length = rest < 56 ? 64 : 128;
    u64 bits = (u64)length * 8;
    for (int i = 0; i < 8; i++) tail[tail_length - 1 - i] = (u8)(bits >> (8 * i));
    compress(state, tail);
    if (tail_length == 128) compress(state, tail + 64);
    for (int i = 0; i < 8; i++) {
        digest_buffer[4 * i] = (u8)(state[i] >> 24);
        digest_buffer[4 * i + 1] = (u8)(state[i] >> 16);
        digest_buffer[4 * i + 2] = (u8)(state[i] >> 8);
        digest_buffer[4 * i + 3] = (u8)state[i];
    }
    return 1;
}

/* The n-th Fibonacci number modulo 2^64 (exact up to n = 93). */
EXPORT("fib") u64 fib(u32 n) {
    u64 a = 0, b = 1;
    for (u32 i = 0; i < n; i++) {
        u64 next = a + b;
        a = b;
        b = next;
    }
    return a;
}
