//! The wgpu device and the resources every op shares: a buffer pool, the pipeline and
//! bind-group caches, and the command recorder that batches a whole forward pass into one
//! submission.
//!
//! Recording model: ops never submit. Each dispatch, copy or clear is appended to a list;
//! its parameters go into a host-side upload arena (one 256-byte slot per dispatch). Work
//! is submitted only when the host needs results (`read`, `argmax`), when the arena is
//! full, or on an explicit flush: the arena is written with one `write_buffer`, and one
//! command encoder carries every recorded command. Because every access to a buffer is
//! in this one ordered stream, buffers can be recycled through the pool as soon as their
//! tensor is dropped, and wgpu inserts the barriers between dependent dispatches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::shaders::{self, BindKind, Kernel, Variant};
use crate::error::{Error, Result};

/// Bytes of the upload arena: 4096 dispatch slots, far more than one decode step needs.
const ARENA_BYTES: u64 = 1 << 20;
/// Alignment of a slot (the largest uniform/storage offset alignment wgpu allows).
pub(crate) const SLOT: u64 = 256;
/// Bytes of the parameter uniform every kernel reads (16 words).
const PARAMS_BYTES: u64 = 64;
/// Bytes of per-dispatch storage data (embedding ids: 256 per dispatch).
pub(crate) const ARENA_DATA_BYTES: u64 = 1024;
/// Idle bytes the pool keeps for reuse before it frees buffers.
const POOL_KEEP_BYTES: u64 = 512 << 20;
/// Bind groups cached before the cache is emptied and rebuilt on demand.
const MAX_BIND_GROUPS: usize = 8192;

/// Options for [`super::GpuBackend::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuOptions {
    /// Use subgroup reductions when the adapter offers `Features::SUBGROUP`.
    pub allow_subgroups: bool,
    /// Use the f16 tiled matmul when the adapter offers `Features::SHADER_F16`.
    pub allow_f16: bool,
    /// Largest buffer (bytes) to split a weight matrix under; the adapter's storage
    /// binding limit when `None`. Tests lower it to exercise weights split over several
    /// buffers.
    pub max_weight_part_bytes: Option<u64>,
    /// Open the device with wgpu's `downlevel_defaults()` limits (128 MiB storage bindings,
    /// 4 storage buffers per stage, 256 invocations, 16 KiB workgroup memory) instead of
    /// the adapter's own: proves the plain path runs on the weakest devices we target.
    pub downlevel_limits: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            allow_subgroups: true,
            allow_f16: true,
            max_weight_part_bytes: None,
            downlevel_limits: false,
        }
    }
}

impl GpuOptions {
    /// The portable path only: no subgroups, no f16, wgpu's downlevel limits.
    pub fn plain() -> Self {
        GpuOptions {
            allow_subgroups: false,
            allow_f16: false,
            max_weight_part_bytes: None,
            downlevel_limits: true,
        }
    }
}

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// Command buffers submitted.
    pub submits: u64,
    pub dispatches: u64,
    /// Bytes read back to the host.
    pub read_bytes: u64,
}

/// Buffers of dropped tensors, kept by size for reuse.
#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    idle_bytes: u64,
    /// Buffers freed for good; their cached bind groups are pruned at the next dispatch.
    evicted: Vec<wgpu::Buffer>,
}

impl Pool {
    fn take(&mut self, size: u64) -> Option<wgpu::Buffer> {
        let b = self.free.get_mut(&size)?.pop()?;
        self.idle_bytes -= size;
        Some(b)
    }

    /// Frees a buffer that will not be needed at its size again (a KV cache that grew).
    pub fn discard(&mut self, b: wgpu::Buffer) {
        self.evicted.push(b);
    }

    pub fn give(&mut self, b: wgpu::Buffer) {
        let size = b.size();
        if self.idle_bytes + size > POOL_KEEP_BYTES {
            self.evicted.push(b);
            return;
        }
        self.idle_bytes += size;
        self.free.entry(size).or_default().push(b);
    }
}

/// A pipeline with its bind group layout.
pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub id: u32,
}

/// A resource bound to one binding of a dispatch.
#[derive(Clone, Copy)]
pub(crate) enum Bind<'a> {
    Buffer(&'a wgpu::Buffer),
    /// The arena slot holding this dispatch's storage data (see [`Ctx::dispatch`]).
    ArenaData,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct BindGroupKey {
    pipeline: u32,
    buffers: Vec<wgpu::Buffer>,
    arena: wgpu::Buffer,
}

enum Cmd {
    Dispatch {
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        offsets: Vec<u32>,
        groups: [u32; 3],
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
    Clear {
        buffer: wgpu::Buffer,
        size: u64,
    },
}

pub(crate) struct State {
    pipelines: HashMap<(Kernel, Variant), Arc<Pipeline>>,
    bind_groups: HashMap<BindGroupKey, wgpu::BindGroup>,
    cmds: Vec<Cmd>,
    arena_host: Vec<u8>,
    arena: wgpu::Buffer,
    /// Bound where a kernel has an optional input it does not use this time.
    pub dummy: wgpu::Buffer,
    /// Split-K attention partials, grown on demand.
    pub attn_part: wgpu::Buffer,
    /// Argmax results.
    pub argmax_out: wgpu::Buffer,
    readback: wgpu::Buffer,
    pub stats: GpuStats,
}

/// The device, queue, adapter facts and the shared mutable state.
pub(crate) struct Ctx {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// Variants this device runs.
    pub variant: Variant,
    /// Largest storage binding.
    pub max_binding: u64,
    /// Largest weight part.
    pub max_weight_part: u64,
    pub state: Mutex<State>,
    pub pool: Arc<Mutex<Pool>>,
}

/// Fills the start of a buffer created with `mapped_at_creation`.
fn write_mapped(buffer: &wgpu::Buffer, data: &[u8]) {
    let mut view = buffer
        .slice(..)
        .get_mapped_range_mut()
        .expect("a buffer created mapped is mapped");
    view.slice(..data.len()).copy_from_slice(data);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while recording leaves no broken invariant the next call cannot live with
    // (at worst a half-recorded op), so a poisoned lock is taken over.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    /// Opens the default adapter (honouring WGPU_BACKEND / WGPU_ADAPTER_NAME) and a device
    /// with the adapter's limits and the optional features the options allow.
    pub fn new(opts: &GpuOptions) -> Result<Ctx> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
            &instance, None,
        ))
        .map_err(|e| Error::GpuUnavailable(format!("no GPU adapter found ({e})")))?;
        let info = adapter.get_info();
        if !adapter.get_downlevel_capabilities().flags.contains(
            wgpu::DownlevelFlags::SHADER_F16_IN_F32 | wgpu::DownlevelFlags::COMPUTE_SHADERS,
        ) {
            return Err(Error::GpuUnavailable(format!(
                "{} ({:?}) lacks compute shaders or f16 unpacking",
                info.name, info.backend
            )));
        }
        let features = adapter.features();
        let limits = if opts.downlevel_limits {
            wgpu::Limits::downlevel_defaults().using_alignment(adapter.limits())
        } else {
            adapter.limits()
        };
        let mut wanted = wgpu::Features::empty();
        let variant = Variant {
            subgroups: opts.allow_subgroups && features.contains(wgpu::Features::SUBGROUP),
            f16: opts.allow_f16 && features.contains(wgpu::Features::SHADER_F16),
        };
        if variant.subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        if variant.f16 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("pocketvlm"),
            required_features: wanted,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| {
            Error::GpuUnavailable(format!("cannot open a device on {}: {e}", info.name))
        })?;
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_weight_part = opts
            .max_weight_part_bytes
            .map_or(max_binding, |m| m.min(max_binding));
        let storage = |label, size| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let state = State {
            pipelines: HashMap::new(),
            bind_groups: HashMap::new(),
            cmds: vec![],
            arena_host: Vec::with_capacity(ARENA_BYTES as usize),
            arena: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("arena"),
                size: ARENA_BYTES,
                usage: wgpu::BufferUsages::UNIFORM
                    | wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            dummy: storage("dummy", 256),
            attn_part: storage("attention partials", 1 << 16),
            argmax_out: storage("argmax", 1 << 12),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: 1 << 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            stats: GpuStats::default(),
        };
        Ok(Ctx {
            device,
            queue,
            info,
            variant,
            max_binding,
            max_weight_part,
            state: Mutex::new(state),
            pool: Arc::new(Mutex::new(Pool::default())),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A storage buffer of at least `size` bytes (a multiple of 4), reused from the pool
    /// when one of that size is free; zeroed either way (in stream order).
    pub fn storage_buffer(&self, st: &mut State, size: u64) -> wgpu::Buffer {
        let size = size.max(16).next_multiple_of(SLOT);
        if let Some(b) = lock(&self.pool).take(size) {
            st.cmds.push(Cmd::Clear {
                buffer: b.clone(),
                size,
            });
            return b;
        }
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tensor"),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer for weights, filled with `data` (zero-padded to a multiple of 4).
    pub fn weight_buffer(&self, data: &[u8]) -> wgpu::Buffer {
        let size = (data.len() as u64).max(16).next_multiple_of(4);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("weight"),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        write_mapped(&buffer, data);
        buffer.unmap();
        buffer
    }

    fn pipeline(&self, st: &mut State, kernel: Kernel) -> Arc<Pipeline> {
        let v = kernel.variant(self.variant);
        if let Some(p) = st.pipelines.get(&(kernel, v)) {
            return p.clone();
        }
        let label = kernel.label(v);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(shaders::compose(kernel, v).into()),
            });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
            .bindings()
            .iter()
            .map(|&(binding, kind)| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match kind {
                    BindKind::Params => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: None,
                    },
                    BindKind::ArenaRead => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: true },
                        has_dynamic_offset: true,
                        min_binding_size: None,
                    },
                    BindKind::Read | BindKind::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: kind == BindKind::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(kernel.entry()),
                compilation_options: Default::default(),
                cache: None,
            });
        let p = Arc::new(Pipeline {
            pipeline,
            layout,
            id: st.pipelines.len() as u32,
        });
        st.pipelines.insert((kernel, v), p.clone());
        p
    }

    /// Records one dispatch of `kernel` with `params` (at most 16 words) and `data` (the
    /// storage words of an `ArenaData` binding, at most 256), binding `binds` in the order
    /// of the kernel's non-parameter bindings.
    pub fn dispatch(
        &self,
        st: &mut State,
        kernel: Kernel,
        params: &[u32],
        data: &[u32],
        binds: &[Bind],
        groups: [u32; 3],
    ) {
        assert!(params.len() as u64 * 4 <= PARAMS_BYTES);
        assert!(data.len() as u64 * 4 <= ARENA_DATA_BYTES);
        if groups.contains(&0) {
            return;
        }
        let slots = if data.is_empty() {
            1
        } else {
            1 + ARENA_DATA_BYTES / SLOT
        };
        if st.arena_host.len() as u64 + slots * SLOT > ARENA_BYTES {
            self.flush(st, None);
        }
        self.prune(st);
        let pipeline = self.pipeline(st, kernel);

        let params_offset = st.arena_host.len() as u32;
        st.arena_host
            .extend_from_slice(bytemuck::cast_slice(params));
        st.arena_host
            .resize(params_offset as usize + SLOT as usize, 0);
        let mut offsets = vec![params_offset];
        if !data.is_empty() {
            let data_offset = st.arena_host.len() as u32;
            st.arena_host.extend_from_slice(bytemuck::cast_slice(data));
            st.arena_host
                .resize(data_offset as usize + ARENA_DATA_BYTES as usize, 0);
            offsets.push(data_offset);
        }

        let key = BindGroupKey {
            pipeline: pipeline.id,
            buffers: binds
                .iter()
                .filter_map(|b| match b {
                    Bind::Buffer(b) => Some((*b).clone()),
                    Bind::ArenaData => None,
                })
                .collect(),
            arena: st.arena.clone(),
        };
        let bind_group = match st.bind_groups.get(&key) {
            Some(bg) => bg.clone(),
            None => {
                let bindings = kernel.bindings();
                assert_eq!(bindings.len(), binds.len() + 1, "{kernel:?}: binding count");
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: bindings[0].0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &st.arena,
                        offset: 0,
                        size: wgpu::BufferSize::new(PARAMS_BYTES),
                    }),
                }];
                for (&(binding, _), b) in bindings[1..].iter().zip(binds) {
                    let resource = match b {
                        Bind::Buffer(b) => b.as_entire_binding(),
                        Bind::ArenaData => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &st.arena,
                            offset: 0,
                            size: wgpu::BufferSize::new(ARENA_DATA_BYTES),
                        }),
                    };
                    entries.push(wgpu::BindGroupEntry { binding, resource });
                }
                let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipeline.layout,
                    entries: &entries,
                });
                if st.bind_groups.len() >= MAX_BIND_GROUPS {
                    st.bind_groups.clear();
                }
                st.bind_groups.insert(key, bg.clone());
                bg
            }
        };
        st.cmds.push(Cmd::Dispatch {
            pipeline: pipeline.pipeline.clone(),
            bind_group,
            offsets,
            groups,
        });
        st.stats.dispatches += 1;
    }

    /// Drops cached bind groups that hold buffers the pool freed.
    fn prune(&self, st: &mut State) {
        let evicted = std::mem::take(&mut lock(&self.pool).evicted);
        if !evicted.is_empty() {
            st.bind_groups
                .retain(|k, _| !k.buffers.iter().any(|b| evicted.contains(b)));
        }
    }

    /// Records a buffer-to-buffer copy (offsets and size multiples of 4).
    pub fn copy(
        &self,
        st: &mut State,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    ) {
        if size == 0 {
            return;
        }
        st.cmds.push(Cmd::Copy {
            src: src.clone(),
            src_offset,
            dst: dst.clone(),
            dst_offset,
            size,
        });
    }

    /// Records an upload of `data` into `dst` at `offset`, ordered after the commands
    /// recorded so far.
    pub fn upload(&self, st: &mut State, dst: &wgpu::Buffer, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if st.cmds.is_empty() {
            // Nothing recorded can observe the old contents: the queue applies the write
            // before the next submission.
            self.queue.write_buffer(dst, offset, data);
            return;
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("upload"),
            size: data.len() as u64,
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        write_mapped(&staging, data);
        staging.unmap();
        self.copy(st, &staging, 0, dst, offset, data.len() as u64);
    }

    /// Submits everything recorded and waits until the device has run it.
    pub fn wait(&self, st: &mut State) {
        self.flush(st, None);
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            panic!("GPU device lost while waiting for results: {e}");
        }
    }

    /// Submits everything recorded, then, with `read = Some((buffer, offset, size))`, copies
    /// those bytes back and returns them.
    pub fn flush(&self, st: &mut State, read: Option<(&wgpu::Buffer, u64, u64)>) -> Vec<u8> {
        if st.cmds.is_empty() && read.is_none() {
            return vec![];
        }
        if let Some((_, _, size)) = read
            && size > st.readback.size()
        {
            st.readback = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: size.next_power_of_two(),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
        }
        if !st.arena_host.is_empty() {
            self.queue.write_buffer(&st.arena, 0, &st.arena_host);
            st.arena_host.clear();
        }
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let cmds = std::mem::take(&mut st.cmds);
        let mut i = 0;
        while i < cmds.len() {
            match &cmds[i] {
                Cmd::Dispatch { .. } => {
                    // Consecutive dispatches share one pass; wgpu orders their accesses.
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: None,
                    });
                    while let Some(Cmd::Dispatch {
                        pipeline,
                        bind_group,
                        offsets,
                        groups,
                    }) = cmds.get(i)
                    {
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, bind_group, offsets);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        i += 1;
                    }
                }
                Cmd::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => {
                    encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                    i += 1;
                }
                Cmd::Clear { buffer, size } => {
                    encoder.clear_buffer(buffer, 0, Some(*size));
                    i += 1;
                }
            }
        }
        if let Some((src, offset, size)) = read {
            encoder.copy_buffer_to_buffer(src, offset, &st.readback, 0, size);
        }
        self.queue.submit([encoder.finish()]);
        st.stats.submits += 1;
        drop(cmds);
        let Some((_, _, size)) = read else {
            return vec![];
        };
        st.stats.read_bytes += size;
        let slice = st.readback.slice(..size);
        slice.map_async(wgpu::MapMode::Read, |r| {
            if let Err(e) = r {
                panic!("GPU readback failed: {e}");
            }
        });
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            panic!("GPU device lost while waiting for results: {e}");
        }
        let out = slice
            .get_mapped_range()
            .unwrap_or_else(|e| panic!("GPU readback not mapped: {e}"))
            .to_vec();
        st.readback.unmap();
        out
    }
}
