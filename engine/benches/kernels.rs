//! Matvec (decode) and GEMM (prefill) kernels per weight format, through the CPU backend.
//! divan reports bytes/s of weights streamed: compare the matvec figures with the machine's
//! memory bandwidth (`pocketvlm bench` measures it).
//!
//! `cargo bench -p pocketvlm-engine --bench kernels`; `POCKETVLM_ISA=avx2` (etc.) picks a
//! lower kernel flavour, `POCKETVLM_ACT=int8` ggml's int8 activations.

use divan::Bencher;
use divan::counter::BytesCount;
use pocketvlm_engine::backend::Backend;
use pocketvlm_engine::backend::cpu::{CpuBackend, CpuTensor};
use pocketvlm_engine::tensor::{DType, HostTensor, Storage};

fn main() {
    divan::main();
}

/// A MobileLLaMA-1.4B FFN matrix (5632 × 2048): larger than the last-level cache in every
/// format but f32 on most machines.
const N: usize = 5632;
const K: usize = 2048;

fn weight(dtype: DType) -> HostTensor {
    let mut s = 0x1234_5678u64;
    let v: Vec<f32> = (0..N * K)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let bytes = pocketvlm_engine::quant::quantize(dtype, &v);
    HostTensor::new(dtype, vec![N, K], Storage::from_bytes(&bytes))
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

/// One decode step's matvec: every weight byte read once.
#[divan::bench(args = FORMATS, sample_count = 30)]
fn matvec(bencher: Bencher, dtype: DType) {
    let (be, w, x, mut out) = setup(dtype, 1);
    let bytes = w.bytes().len();
    bencher
        .counter(BytesCount::new(bytes))
        .bench_local(|| be.matmul(&x, &w, None, &mut out));
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
