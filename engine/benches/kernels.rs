//! Matvec (decode) and GEMM (prefill) kernels per weight format, through the CPU backend.
//! divan reports bytes/s of weights streamed: compare the matvec figures with the machine's
//! memory bandwidth (`pocketvlm bench` measures it).
//!
//! `cargo bench -p pocketvlm-engine --bench kernels`; `POCKETVLM_ISA=avx2` (etc.) picks a
//! lower kernel flavour, `POCKETVLM_ACT=int16` int16 activations (see `ActPrecision`).

use divan::Bencher;
use divan::counter::BytesCount;
use pocketvlm_engine::backend::Backend;
use pocketvlm_engine::backend::cpu::{CpuBackend, CpuTensor};
use pocketvlm_engine::tensor::{DType, HostTensor, Storage};

fn main() {
    divan::main();
}

/// A MobileLLaMA-1.4B FFN matrix (5632 × 2048).
const N: usize = 5632;
const K: usize = 2048;

fn weight(dtype: DType) -> HostTensor {
    weight_rows(dtype, N)
}

fn weight_rows(dtype: DType, n: usize) -> HostTensor {
    let mut s = 0x1234_5678u64;
    let v: Vec<f32> = (0..n * K)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let bytes = pocketvlm_engine::quant::quantize(dtype, &v);
    HostTensor::new(dtype, vec![n, K], Storage::from_bytes(&bytes))
}

fn setup(dtype: DType, rows: usize) -> (CpuBackend, HostTensor, CpuTensor, CpuTensor) {
    let be = CpuBackend::new(None).expect("backend");
    let w = weight(dtype);
    let mut x = be.tensor(rows, K);
    let data: Vec<f32> = (0..rows * K)
        .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
        .collect();
    be.write(&mut x, &data);
    let out = be.tensor(rows, N);
    (be, w, x, out)
}

const FORMATS: [DType; 6] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q8_0,
    DType::F16,
    DType::BF16,
    DType::F32,
];

/// Bytes of distinct weight copies the streaming matvec cycles through: far more than any
/// last-level cache (this dev VM's L3 is 32 MiB and holds one 1.4B FFN matrix in every
/// format), so each call reads its weights from memory as a decode step does.
const STREAM_BYTES: usize = 512 << 20;

/// One decode step's matvec: every weight byte read once, from memory.
#[divan::bench(args = FORMATS, sample_count = 30)]
fn matvec(bencher: Bencher, dtype: DType) {
    let (be, w, x, mut out) = setup(dtype, 1);
    let bytes = w.bytes().len();
    let copies: Vec<HostTensor> = (0..STREAM_BYTES.div_ceil(bytes))
        .map(|_| HostTensor::new(dtype, vec![N, K], Storage::from_bytes(w.bytes())))
        .collect();
    let mut next = 0;
    bencher.counter(BytesCount::new(bytes)).bench_local(|| {
        next = (next + 1) % copies.len();
        be.matmul(&x, &copies[next], None, &mut out)
    });
}

/// A 128-token prefill chunk (compute-bound); the counter is weight bytes, so GB/s × 128
/// is the effective reuse.
#[divan::bench(args = [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::F16], sample_count = 5)]
fn gemm128(bencher: Bencher, dtype: DType) {
    let (be, w, x, mut out) = setup(dtype, 128);
    let bytes = w.bytes().len();
    bencher
        .counter(BytesCount::new(bytes))
        .bench_local(|| be.matmul(&x, &w, None, &mut out));
}

/// Rows of a matrix small enough to stay in L2 (Q4_0: 1.1 MiB, half per core).
const N_CACHED: usize = 1024;

/// The matvec over a weight that stays in cache: the kernel's compute ceiling. When it is
/// not far above `matvec`'s figure, decode is bound by the kernel, not by memory.
#[divan::bench(args = [DType::Q4_0, DType::Q4_1, DType::Q8_0], sample_count = 30)]
fn matvec_in_cache(bencher: Bencher, dtype: DType) {
    let be = CpuBackend::new(None).expect("backend");
    let w = weight_rows(dtype, N_CACHED);
    let mut x = be.tensor(1, K);
    be.write(&mut x, &vec![0.5; K]);
    let mut out = be.tensor(1, N_CACHED);
    let bytes = w.bytes().len();
    bencher
        .counter(BytesCount::new(bytes))
        .bench_local(|| be.matmul(&x, &w, None, &mut out));
}
