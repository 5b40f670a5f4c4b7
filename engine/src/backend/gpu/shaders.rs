//! The WGSL sources (`shaders/`, one op per file, compiled into the binary) and how they
//! are put together into compute modules.
//!
//! A module is `prelude + [reduce_*.wgsl] + [matmul_<dtype>.wgsl] + <op>.wgsl`:
//! - the prelude is generated here: `enable f16;` where needed and the compile-time sizes a
//!   kernel is specialised for (`WG`, `MAX_T`, `HD`, `TILE`);
//! - `reduce_plain.wgsl` or `reduce_subgroup.wgsl` supplies the workgroup reductions, so
//!   every reducing kernel gets a subgroup variant by swapping one file;
//! - `matmul_<dtype>.wgsl` supplies the weight readers (`w_quad`, `w_block`, ...) that the
//!   matmul and embedding kernels are written against, so one kernel serves every format.
//!
//! [`all_modules`] lists every module the backend can build; a unit test parses and
//! validates each with naga and checks that every file in `shaders/` is used.

use crate::tensor::DType;

macro_rules! wgsl {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/", $name)),
        )
    };
}

/// Every shader file, by name.
pub(crate) const FILES: &[(&str, &str)] = &[
    wgsl!("activation.wgsl"),
    wgsl!("adaptive_avg_pool.wgsl"),
    wgsl!("add.wgsl"),
    wgsl!("argmax.wgsl"),
    wgsl!("attention_decode.wgsl"),
    wgsl!("attention_prefill.wgsl"),
    wgsl!("depthwise_conv3x3.wgsl"),
    wgsl!("embed.wgsl"),
    wgsl!("layer_norm.wgsl"),
    wgsl!("matmul_bf16.wgsl"),
    wgsl!("matmul_f16.wgsl"),
    wgsl!("matmul_f32.wgsl"),
    wgsl!("matmul_q4_0.wgsl"),
    wgsl!("matmul_q4_1.wgsl"),
    wgsl!("matmul_q8_0.wgsl"),
    wgsl!("matmul_tiled.wgsl"),
    wgsl!("matmul_tiled_f16.wgsl"),
    wgsl!("matvec.wgsl"),
    wgsl!("mean_rows.wgsl"),
    wgsl!("mul_channels.wgsl"),
    wgsl!("reduce_plain.wgsl"),
    wgsl!("reduce_subgroup.wgsl"),
    wgsl!("rms_norm.wgsl"),
    wgsl!("rope.wgsl"),
    wgsl!("softmax.wgsl"),
];

fn file(name: &str) -> &'static str {
    FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("shader {name} is not in FILES"))
}

/// Weight formats the matmul and embedding kernels read.
#[cfg(test)]
pub(crate) const WEIGHT_DTYPES: [DType; 6] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q8_0,
];

/// Activation rows the matrix–vector kernel handles in one pass (decode and short
/// prompts); more rows go to the tiled kernel.
pub(crate) const MATVEC_MAX_ROWS: usize = 8;
/// Query rows up to which attention uses the split-K (decode) kernels.
pub(crate) const ATTN_DECODE_MAX_ROWS: usize = 4;
/// Keys per split-K chunk (= the decode kernel's workgroup size).
pub(crate) const ATTN_CHUNK: usize = 64;
/// Query rows per prefill attention workgroup.
pub(crate) const ATTN_PREFILL_ROWS: usize = 64;
/// The largest head the attention kernels take.
pub(crate) const MAX_HEAD_DIM: usize = 256;
/// Floats of workgroup memory the prefill attention tile uses (12 KiB).
const ATTN_TILE_FLOATS: usize = 3072;

/// Workgroup size of the row-reducing kernels (norms, softmax, argmax).
const ROW_WG: u32 = 256;
/// Workgroup size of the matrix–vector kernel.
const MATVEC_WG: u32 = 64;

/// One compute kernel, specialised as far as the WGSL source needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// Matrix–vector product for up to `max_t` activation rows (1 or
    /// [`MATVEC_MAX_ROWS`]).
    Matvec {
        dtype: DType,
        max_t: u32,
    },
    MatmulTiled(DType),
    /// Tiled matmul with the weight tile in f16 workgroup memory (SHADER_F16 adapters,
    /// formats whose values f16 holds exactly).
    MatmulTiledF16(DType),
    Embed(DType),
    RmsNorm,
    LayerNorm,
    Rope,
    AttnSplit,
    AttnCombine,
    /// Prefill attention for heads up to `hd` values (a multiple of 32).
    AttnPrefill {
        hd: u32,
    },
    Activate,
    Gated,
    Add,
    MulChannels,
    MeanRows,
    Softmax,
    Argmax,
    DepthwiseConv3x3,
    AdaptiveAvgPool,
}

/// How a kernel's binding is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BindKind {
    /// The per-dispatch parameters: a uniform slice of the upload arena (dynamic offset).
    Params,
    /// Per-dispatch data in the upload arena, read as storage (dynamic offset).
    ArenaRead,
    Read,
    ReadWrite,
}

use BindKind::{ArenaRead, Params, Read, ReadWrite};

/// Shader features a module needs from the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    pub subgroups: bool,
    pub f16: bool,
}

impl Kernel {
    /// The op file (last in the module).
    fn main_file(self) -> &'static str {
        match self {
            Kernel::Matvec { .. } => "matvec.wgsl",
            Kernel::MatmulTiled(_) => "matmul_tiled.wgsl",
            Kernel::MatmulTiledF16(_) => "matmul_tiled_f16.wgsl",
            Kernel::Embed(_) => "embed.wgsl",
            Kernel::RmsNorm => "rms_norm.wgsl",
            Kernel::LayerNorm => "layer_norm.wgsl",
            Kernel::Rope => "rope.wgsl",
            Kernel::AttnSplit | Kernel::AttnCombine => "attention_decode.wgsl",
            Kernel::AttnPrefill { .. } => "attention_prefill.wgsl",
            Kernel::Activate | Kernel::Gated => "activation.wgsl",
            Kernel::Add => "add.wgsl",
            Kernel::MulChannels => "mul_channels.wgsl",
            Kernel::MeanRows => "mean_rows.wgsl",
            Kernel::Softmax => "softmax.wgsl",
            Kernel::Argmax => "argmax.wgsl",
            Kernel::DepthwiseConv3x3 => "depthwise_conv3x3.wgsl",
            Kernel::AdaptiveAvgPool => "adaptive_avg_pool.wgsl",
        }
    }

    pub fn entry(self) -> &'static str {
        match self {
            Kernel::AttnSplit => "split",
            Kernel::AttnCombine => "combine",
            Kernel::Activate => "activate",
            Kernel::Gated => "gated",
            _ => "main",
        }
    }

    /// Whether the kernel uses the workgroup reductions (and so has a subgroup variant).
    pub fn reduces(self) -> bool {
        matches!(
            self,
            Kernel::Matvec { .. }
                | Kernel::RmsNorm
                | Kernel::LayerNorm
                | Kernel::AttnSplit
                | Kernel::AttnCombine
                | Kernel::Softmax
                | Kernel::Argmax
        )
    }

    fn weight_dtype(self) -> Option<DType> {
        match self {
            Kernel::Matvec { dtype: d, .. }
            | Kernel::MatmulTiled(d)
            | Kernel::MatmulTiledF16(d)
            | Kernel::Embed(d) => Some(d),
            _ => None,
        }
    }

    /// Compile-time sizes the source expects.
    fn consts(self) -> String {
        match self {
            Kernel::Matvec { .. } => {
                format!("const WG: u32 = {MATVEC_WG}u;\nconst MAX_T: u32 = {MATVEC_MAX_ROWS}u;\n")
            }
            Kernel::RmsNorm | Kernel::LayerNorm | Kernel::Softmax | Kernel::Argmax => {
                format!("const WG: u32 = {ROW_WG}u;\n")
            }
            Kernel::AttnSplit | Kernel::AttnCombine => format!("const WG: u32 = {ATTN_CHUNK}u;\n"),
            Kernel::AttnPrefill { hd } => {
                let tile = prefill_tile(hd as usize);
                format!(
                    "const WG: u32 = {ATTN_PREFILL_ROWS}u;\nconst HD: u32 = {hd}u;\nconst TILE: u32 = {tile}u;\n"
                )
            }
            _ => String::new(),
        }
    }

    /// The bindings of group 0, in binding order.
    pub fn bindings(self) -> &'static [(u32, BindKind)] {
        match self {
            Kernel::Matvec { .. } | Kernel::MatmulTiled(_) | Kernel::MatmulTiledF16(_) => {
                &[(0, Params), (1, Read), (2, Read), (3, Read), (4, ReadWrite)]
            }
            Kernel::Embed(_) => &[(0, Params), (1, Read), (2, ArenaRead), (3, ReadWrite)],
            Kernel::RmsNorm => &[(0, Params), (1, Read), (2, Read), (3, ReadWrite)],
            Kernel::LayerNorm => &[(0, Params), (1, Read), (2, Read), (3, Read), (4, ReadWrite)],
            Kernel::Rope => &[(0, Params), (1, ReadWrite), (2, Read), (3, Read)],
            Kernel::AttnSplit => &[(0, Params), (1, Read), (2, Read), (3, Read), (4, ReadWrite)],
            Kernel::AttnCombine => &[(0, Params), (4, ReadWrite), (5, ReadWrite)],
            Kernel::AttnPrefill { .. } => {
                &[(0, Params), (1, Read), (2, Read), (3, Read), (4, ReadWrite)]
            }
            Kernel::Activate => &[(0, Params), (1, ReadWrite)],
            Kernel::Gated => &[(0, Params), (1, ReadWrite), (2, Read), (3, Read)],
            Kernel::Add | Kernel::MulChannels => &[(0, Params), (1, ReadWrite), (2, Read)],
            Kernel::MeanRows | Kernel::Argmax | Kernel::AdaptiveAvgPool => {
                &[(0, Params), (1, Read), (2, ReadWrite)]
            }
            Kernel::Softmax => &[(0, Params), (1, ReadWrite)],
            Kernel::DepthwiseConv3x3 => {
                &[(0, Params), (1, Read), (2, Read), (3, Read), (4, ReadWrite)]
            }
        }
    }

    /// The variant actually built for this kernel on a device offering `available`.
    pub fn variant(self, available: Variant) -> Variant {
        Variant {
            subgroups: available.subgroups && self.reduces(),
            f16: matches!(self, Kernel::MatmulTiledF16(_)),
        }
    }

    /// A readable name for labels and test messages.
    pub fn label(self, v: Variant) -> String {
        let mut s = format!("{self:?}");
        if v.subgroups {
            s.push_str("+subgroups");
        }
        if v.f16 {
            s.push_str("+f16");
        }
        s
    }
}

/// Keys per prefill attention tile for heads of `hd` (padded) values.
pub(crate) fn prefill_tile(hd: usize) -> usize {
    (ATTN_TILE_FLOATS / hd).min(64)
}

/// `head_dim` rounded up to the prefill kernel's specialisation step.
pub(crate) fn prefill_hd(head_dim: usize) -> u32 {
    head_dim.div_ceil(32).max(1) as u32 * 32
}

fn dtype_file(d: DType) -> &'static str {
    match d {
        DType::F32 => "matmul_f32.wgsl",
        DType::F16 => "matmul_f16.wgsl",
        DType::BF16 => "matmul_bf16.wgsl",
        DType::Q4_0 => "matmul_q4_0.wgsl",
        DType::Q4_1 => "matmul_q4_1.wgsl",
        DType::Q8_0 => "matmul_q8_0.wgsl",
    }
}

/// Formats whose values (or integer codes) f16 represents exactly.
pub(crate) fn f16_tile_ok(d: DType) -> bool {
    matches!(d, DType::F16 | DType::Q4_0 | DType::Q4_1 | DType::Q8_0)
}

/// The files of a module, in order.
pub(crate) fn module_files(k: Kernel, v: Variant) -> Vec<&'static str> {
    let mut files = vec![];
    if k.reduces() {
        files.push(if v.subgroups {
            "reduce_subgroup.wgsl"
        } else {
            "reduce_plain.wgsl"
        });
    }
    if let Some(d) = k.weight_dtype() {
        files.push(dtype_file(d));
    }
    files.push(k.main_file());
    files
}

/// The WGSL source of kernel `k` in variant `v`.
pub(crate) fn compose(k: Kernel, v: Variant) -> String {
    let mut src = String::new();
    if v.f16 {
        // Must come before any declaration.
        src.push_str("enable f16;\n");
    }
    src.push_str(&k.consts());
    for f in module_files(k, v) {
        src.push_str("\n// ---- ");
        src.push_str(f);
        src.push_str(" ----\n");
        src.push_str(file(f));
    }
    src
}

/// Every (kernel, variant) the backend may build.
#[cfg(test)]
pub(crate) fn all_modules() -> Vec<(Kernel, Variant)> {
    let mut kernels = vec![];
    for d in WEIGHT_DTYPES {
        for max_t in [1, MATVEC_MAX_ROWS as u32] {
            kernels.push(Kernel::Matvec { dtype: d, max_t });
        }
        kernels.extend([Kernel::MatmulTiled(d), Kernel::Embed(d)]);
        if f16_tile_ok(d) {
            kernels.push(Kernel::MatmulTiledF16(d));
        }
    }
    kernels.extend([
        Kernel::RmsNorm,
        Kernel::LayerNorm,
        Kernel::Rope,
        Kernel::AttnSplit,
        Kernel::AttnCombine,
        Kernel::Activate,
        Kernel::Gated,
        Kernel::Add,
        Kernel::MulChannels,
        Kernel::MeanRows,
        Kernel::Softmax,
        Kernel::Argmax,
        Kernel::DepthwiseConv3x3,
        Kernel::AdaptiveAvgPool,
    ]);
    for hd in (32..=MAX_HEAD_DIM as u32).step_by(32) {
        kernels.push(Kernel::AttnPrefill { hd });
    }
    let mut out = vec![];
    for k in kernels {
        for subgroups in [false, true] {
            let v = k.variant(Variant {
                subgroups,
                f16: true,
            });
            if !out.contains(&(k, v)) {
                out.push((k, v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use naga::valid::{
        Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator,
    };

    fn validate(k: Kernel, v: Variant) -> Result<naga::Module, String> {
        let src = compose(k, v);
        let module = naga::front::wgsl::parse_str(&src)
            .map_err(|e| e.emit_to_string_with_path(&src, &k.label(v)))?;
        // Only the capabilities the variant asks the device for: a plain module that used
        // f16 or subgroups by mistake fails here. Converting f16 bits to f32
        // (unpack2x16float) is a downlevel capability every native backend has.
        let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        if v.subgroups {
            caps |= Capabilities::SUBGROUP;
        }
        if v.f16 {
            caps |= Capabilities::SHADER_FLOAT16;
        }
        let mut validator = Validator::new(ValidationFlags::all(), caps);
        if v.subgroups {
            validator
                .subgroup_stages(ShaderStages::COMPUTE)
                .subgroup_operations(SubgroupOperationSet::all());
        }
        validator
            .validate(&module)
            .map_err(|e| e.emit_to_string_with_path(&src, &k.label(v)))?;
        Ok(module)
    }

    #[test]
    fn every_module_parses_and_validates() {
        let mut failures = vec![];
        for (k, v) in all_modules() {
            match validate(k, v) {
                Ok(module) => {
                    // The entry point exists and the workgroup fits the portable limits.
                    let ep = module
                        .entry_points
                        .iter()
                        .find(|e| e.name == k.entry())
                        .unwrap_or_else(|| panic!("{}: no entry point {}", k.label(v), k.entry()));
                    let [x, y, z] = ep.workgroup_size;
                    assert!(x * y * z <= 256, "{}: workgroup {x}×{y}×{z}", k.label(v));
                }
                Err(e) => failures.push(e),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn workgroup_memory_fits_the_downlevel_limit() {
        // wgpu's downlevel limit is 16352 bytes of workgroup memory per kernel.
        for (k, v) in all_modules() {
            let module = validate(k, v).unwrap();
            let mut bytes = 0u32;
            for (_, var) in module.global_variables.iter() {
                if var.space == naga::AddressSpace::WorkGroup {
                    let mut layouter = naga::proc::Layouter::default();
                    layouter.update(module.to_ctx()).unwrap();
                    bytes += layouter[var.ty].size;
                }
            }
            assert!(
                bytes <= 16352,
                "{}: {bytes} bytes of workgroup memory",
                k.label(v)
            );
        }
    }

    #[test]
    fn every_shader_file_is_compiled_in_and_used() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.ends_with(".wgsl").then_some(name)
            })
            .collect();
        on_disk.sort();
        let listed: Vec<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, listed, "shaders/ and FILES differ");
        for (name, _) in FILES {
            assert!(
                all_modules()
                    .iter()
                    .any(|&(k, v)| module_files(k, v).contains(name)),
                "{name} is not part of any module"
            );
        }
    }
}
