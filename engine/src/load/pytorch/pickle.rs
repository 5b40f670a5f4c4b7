//! A restricted pickle reader: the subset that `torch.save` writes for state dicts, evaluated
//! on a value stack without executing anything.
//!
//! A pickle is a program for a stack machine whose GLOBAL + REDUCE opcodes call any Python
//! callable by name, so a model file can run code when Python loads it. Here GLOBAL only
//! resolves names on a fixed allowlist (tensor and storage constructors, OrderedDict, dtypes)
//! to symbolic values, and REDUCE "calls" them by building a description of the result
//! (a tensor's storage key, offset, shape and strides). Every other global is refused with
//! its name; opcodes outside the subset are refused too.
//!
//! Objects live in an arena and values refer to them by index: lists and dicts can be
//! mutated through memo references exactly as in Python, reference cycles are harmless, and
//! nothing is recursive (no deep drops, no deep walks), so a hostile pickle cannot overflow
//! the stack. Memory is proportional to the pickle's length: opcodes that copy shared data
//! (a memoized storage key, shape or name reused by many tensors) draw on a budget that is a
//! small multiple of that length, so a few bytes cannot expand into gigabytes.

use std::cell::Cell;
use std::collections::HashMap;

/// Why a pickle was not accepted.
#[derive(Debug, PartialEq)]
pub(crate) enum PickleError {
    /// The pickle names a callable outside the allowlist (`module.name`): running it with
    /// Python could execute arbitrary code.
    Refused(String),
    /// The pickle is malformed or uses something this reader does not support.
    Bad(String),
}

type Result<T> = std::result::Result<T, PickleError>;

fn bad<T>(reason: impl Into<String>) -> Result<T> {
    Err(PickleError::Bad(reason.into()))
}

/// Element types of torch tensors this reader knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TorchDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    U16,
    U32,
    U64,
    F8E4M3,
    F8E5M2,
}

impl TorchDtype {
    pub fn size(self) -> usize {
        use TorchDtype::*;
        match self {
            F64 | I64 | U64 => 8,
            F32 | I32 | U32 => 4,
            F16 | BF16 | I16 | U16 => 2,
            I8 | U8 | Bool | F8E4M3 | F8E5M2 => 1,
        }
    }

    /// The dtype's name in safetensors headers, so both formats describe tensors alike.
    pub fn safetensors_name(self) -> &'static str {
        use TorchDtype::*;
        match self {
            F64 => "F64",
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            I64 => "I64",
            I32 => "I32",
            I16 => "I16",
            I8 => "I8",
            U8 => "U8",
            Bool => "BOOL",
            U16 => "U16",
            U32 => "U32",
            U64 => "U64",
            F8E4M3 => "F8_E4M3",
            F8E5M2 => "F8_E5M2",
        }
    }
}

/// The typed storage classes of `torch` (what `_rebuild_tensor_v2` files name).
const TYPED_STORAGES: [(&str, TorchDtype); 10] = [
    ("FloatStorage", TorchDtype::F32),
    ("HalfStorage", TorchDtype::F16),
    ("BFloat16Storage", TorchDtype::BF16),
    ("DoubleStorage", TorchDtype::F64),
    ("LongStorage", TorchDtype::I64),
    ("IntStorage", TorchDtype::I32),
    ("ShortStorage", TorchDtype::I16),
    ("CharStorage", TorchDtype::I8),
    ("ByteStorage", TorchDtype::U8),
    ("BoolStorage", TorchDtype::Bool),
];

/// `torch.<dtype>` objects (what `_rebuild_tensor_v3` names, for dtypes without a typed
/// storage class such as uint16 or float8).
const DTYPES: [(&str, TorchDtype); 15] = [
    ("float64", TorchDtype::F64),
    ("float32", TorchDtype::F32),
    ("float16", TorchDtype::F16),
    ("bfloat16", TorchDtype::BF16),
    ("int64", TorchDtype::I64),
    ("int32", TorchDtype::I32),
    ("int16", TorchDtype::I16),
    ("int8", TorchDtype::I8),
    ("uint8", TorchDtype::U8),
    ("bool", TorchDtype::Bool),
    ("uint16", TorchDtype::U16),
    ("uint32", TorchDtype::U32),
    ("uint64", TorchDtype::U64),
    ("float8_e4m3fn", TorchDtype::F8E4M3),
    ("float8_e5m2", TorchDtype::F8E5M2),
];

/// The only globals a pickle may name. None of them runs anything here: each is a tag that
/// REDUCE and BINPERSID interpret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    /// `collections.OrderedDict`: the state dict itself and empty `backward_hooks`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
    /// backward_hooks[, metadata])`: every tensor of a typed storage.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor_v3(..., backward_hooks, dtype[, metadata])`: tensors of
    /// an untyped storage (dtypes with no typed storage class).
    RebuildTensorV3,
    /// `torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(data, requires_grad, hooks, state)`: a
    /// Parameter with Python attributes (ignored).
    RebuildParameterWithState,
    TypedStorage(TorchDtype),
    /// `torch.storage.UntypedStorage`: a storage of bytes.
    UntypedStorage,
    Dtype(TorchDtype),
}

fn resolve_global(module: &str, name: &str) -> Result<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch.storage", "UntypedStorage") => Global::UntypedStorage,
        ("torch", n) => {
            if let Some(&(_, dt)) = TYPED_STORAGES.iter().find(|(s, _)| *s == n) {
                Global::TypedStorage(dt)
            } else if let Some(&(_, dt)) = DTYPES.iter().find(|(s, _)| *s == n) {
                Global::Dtype(dt)
            } else if n.ends_with("Storage") {
                // Complex and quantized storages: harmless, but not weights we can use.
                return bad(format!(
                    "`torch.{n}` tensors (complex or quantized) are not supported"
                ));
            } else {
                return Err(PickleError::Refused(format!("{module}.{name}")));
            }
        }
        _ => return Err(PickleError::Refused(format!("{module}.{name}"))),
    };
    Ok(g)
}

fn global_name(g: Global) -> String {
    match g {
        Global::OrderedDict => "collections.OrderedDict".into(),
        Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
        Global::RebuildTensorV3 => "torch._utils._rebuild_tensor_v3".into(),
        Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
        Global::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state".into(),
        Global::UntypedStorage => "torch.storage.UntypedStorage".into(),
        Global::TypedStorage(dt) => {
            let n = TYPED_STORAGES
                .iter()
                .find(|(_, d)| *d == dt)
                .map_or("?", |s| s.0);
            format!("torch.{n}")
        }
        Global::Dtype(dt) => {
            let n = DTYPES.iter().find(|(_, d)| *d == dt).map_or("?", |s| s.0);
            format!("torch.{n}")
        }
    }
}

/// A storage named by a persistent id `('storage', type, key, location, numel)`: the bytes
/// of archive entry `data/<key>`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StorageRef {
    pub key: String,
    /// None for an untyped storage (its elements are bytes).
    pub dtype: Option<TorchDtype>,
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor_v2/v3` describes it: a strided view of a storage. Offset and
/// strides count elements of `dtype`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub dtype: TorchDtype,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub strides: Vec<u64>,
}

/// A value on the stack: scalars inline, everything else an index into the object arena.
/// Only integers keep their value (offsets, sizes, strides); booleans and floats never
/// matter for weights.
#[derive(Clone, Copy, Debug)]
enum Val {
    None,
    Bool,
    Int(i64),
    Float,
    Obj(usize),
}

#[derive(Debug)]
enum Obj {
    Str(String),
    /// Contents are not kept: bytes never matter for weights.
    Bytes,
    Tuple(Vec<Val>),
    List(Vec<Val>),
    /// Insertion order; a repeated key is resolved when the state dict is read (last wins).
    Dict(Vec<(Val, Val)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// Python's name for the kind of a value, for error messages.
fn kind(objs: &[Obj], v: Val) -> &'static str {
    match v {
        Val::None => "None",
        Val::Bool => "bool",
        Val::Int(_) => "int",
        Val::Float => "float",
        Val::Obj(i) => match &objs[i] {
            Obj::Str(_) => "str",
            Obj::Bytes => "bytes",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Global(_) => "global",
            Obj::Storage(_) => "storage",
            Obj::Tensor(_) => "tensor",
        },
    }
}

/// Names of pickle opcodes, for error messages.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "an unknown opcode",
    }
}

/// Top-level keys under which training checkpoints keep the model's state dict.
const WRAPPER_KEYS: [&str; 4] = ["state_dict", "model", "module", "model_state_dict"];

/// Reads a `torch.save` pickle and returns its state dict: (name, tensor) in pickle order.
/// The top-level object must be a dict of tensors, or a dict holding one under a key of
/// [`WRAPPER_KEYS`]; entries whose value is not a tensor are skipped.
pub(crate) fn read_state_dict(pickle: &[u8]) -> Result<Vec<(String, TensorRef)>> {
    let mut m = Machine::new(pickle);
    let root = m.run()?;
    m.state_dict(root)
}

/// Copy budget: units (values, dims, bytes of keys and names) that may be copied out of
/// shared objects, per byte of pickle. torch.save pickles copy well under one per byte.
const BUDGET_PER_BYTE: usize = 4;
const BUDGET_BASE: usize = 1 << 20;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    /// Stack lengths at each open MARK (Python's metastack).
    marks: Vec<usize>,
    memo: HashMap<u32, Val>,
    objs: Vec<Obj>,
    /// What copies may still take (see `BUDGET_PER_BYTE`).
    budget: Cell<usize>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Machine {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objs: Vec::new(),
            budget: Cell::new(
                BUDGET_BASE.saturating_add(data.len().saturating_mul(BUDGET_PER_BYTE)),
            ),
        }
    }

    /// Charges a copy of `units` against the budget.
    fn spend(&self, units: usize) -> Result<()> {
        match self.budget.get().checked_sub(units) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => bad("the pickle expands to far more data than its size (a pickle bomb?)"),
        }
    }

    fn run(&mut self) -> Result<Val> {
        loop {
            let at = self.pos;
            let Some(&op) = self.data.get(at) else {
                return bad(format!(
                    "ends at byte {at} without a STOP opcode (truncated?)"
                ));
            };
            self.pos += 1;
            match self.step(op) {
                Ok(Some(root)) => return Ok(root),
                Ok(None) => {}
                Err(PickleError::Bad(reason)) => {
                    return bad(format!(
                        "byte {at}, opcode {} (0x{op:02x}): {reason}",
                        opcode_name(op)
                    ));
                }
                Err(refused) => return Err(refused),
            }
        }
    }

    /// Executes one opcode; Some(value) at STOP.
    fn step(&mut self, op: u8) -> Result<Option<Val>> {
        match op {
            0x80 => {
                // PROTO
                let v = self.take(1)?[0];
                if v > 5 {
                    return bad(format!("protocol {v} is newer than 5"));
                }
            }
            0x95 => {
                // FRAME. Frames only group opcodes for buffered reading; the whole pickle is in
                // memory, so the length is only checked.
                let n = self.u64()?;
                if n > (self.data.len() - self.pos) as u64 {
                    return bad(format!("frame of {n} bytes runs past the end (truncated?)"));
                }
            }
            // STOP
            b'.' => return self.pop().map(Some),
            // MARK
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                // POP. Like Python: with nothing above the mark, POP drops the mark.
                if self.stack.len() > self.base() {
                    self.stack.pop();
                } else {
                    self.pop_mark()?;
                }
            }
            b'1' => {
                // POP_MARK
                self.pop_mark()?;
            }
            b'2' => {
                // DUP
                let v = self.top()?;
                self.stack.push(v);
            }
            // NONE
            b'N' => self.stack.push(Val::None),
            0x88 | 0x89 => self.stack.push(Val::Bool), // NEWTRUE, NEWFALSE
            b'J' => {
                // BININT
                let v = i32::from_le_bytes(self.array()?);
                self.stack.push(Val::Int(v.into()));
            }
            b'K' => {
                // BININT1
                let v = self.take(1)?[0];
                self.stack.push(Val::Int(v.into()));
            }
            b'M' => {
                // BININT2
                let v = u16::from_le_bytes(self.array()?);
                self.stack.push(Val::Int(v.into()));
            }
            0x8a => {
                // LONG1
                let n = self.take(1)?[0] as usize;
                let v = self.long(n)?;
                self.stack.push(Val::Int(v));
            }
            b'G' => {
                // BINFLOAT
                self.take(8)?;
                self.stack.push(Val::Float);
            }
            b'X' => {
                // BINUNICODE
                let n = u32::from_le_bytes(self.array()?);
                self.string(n.into())?;
            }
            0x8c => {
                // SHORT_BINUNICODE
                let n = self.take(1)?[0];
                self.string(n.into())?;
            }
            0x8d => {
                // BINUNICODE8
                let n = self.u64()?;
                self.string(n)?;
            }
            b'C' => {
                // SHORT_BINBYTES
                let n = self.take(1)?[0];
                self.bytes(n.into())?;
            }
            b'B' => {
                // BINBYTES
                let n = u32::from_le_bytes(self.array()?);
                self.bytes(n.into())?;
            }
            0x8e => {
                // BINBYTES8
                let n = self.u64()?;
                self.bytes(n)?;
            }
            // EMPTY_TUPLE
            b')' => self.push_obj(Obj::Tuple(Vec::new())),
            b't' => {
                // TUPLE
                let items = self.pop_mark()?;
                self.push_obj(Obj::Tuple(items));
            }
            0x85..=0x87 => {
                // TUPLE1, TUPLE2, TUPLE3
                let n = (op - 0x84) as usize;
                if self.stack.len() < self.base() + n {
                    return bad("stack underflow");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push_obj(Obj::Tuple(items));
            }
            // EMPTY_LIST
            b']' => self.push_obj(Obj::List(Vec::new())),
            b'l' => {
                // LIST
                let items = self.pop_mark()?;
                self.push_obj(Obj::List(items));
            }
            b'a' => {
                // APPEND
                let v = self.pop()?;
                self.list_of_top()?.push(v);
            }
            b'e' => {
                // APPENDS
                let items = self.pop_mark()?;
                self.list_of_top()?.extend(items);
            }
            // EMPTY_DICT
            b'}' => self.push_obj(Obj::Dict(Vec::new())),
            b'd' => {
                // DICT
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push_obj(Obj::Dict(pairs));
            }
            b's' => {
                // SETITEM
                let v = self.pop()?;
                let k = self.pop()?;
                self.dict_of_top()?.push((k, v));
            }
            b'u' => {
                // SETITEMS
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.dict_of_top()?.extend(pairs);
            }
            b'q' => {
                // BINPUT
                let i = self.take(1)?[0];
                self.put(i.into())?;
            }
            b'r' => {
                // LONG_BINPUT
                let i = u32::from_le_bytes(self.array()?);
                self.put(i)?;
            }
            0x94 => {
                // MEMOIZE
                let i = u32::try_from(self.memo.len()).map_err(|_| bad_memo())?;
                self.put(i)?;
            }
            b'h' => {
                // BINGET
                let i = self.take(1)?[0];
                self.get(i.into())?;
            }
            b'j' => {
                // LONG_BINGET
                let i = u32::from_le_bytes(self.array()?);
                self.get(i)?;
            }
            b'c' => {
                // GLOBAL
                let module = self.line()?;
                let name = self.line()?;
                let g = resolve_global(&module, &name)?;
                self.push_obj(Obj::Global(g));
            }
            0x93 => {
                // STACK_GLOBAL
                let name = self.pop()?;
                let module = self.pop()?;
                let (Some(module), Some(name)) = (self.str_of(module), self.str_of(name)) else {
                    return bad("STACK_GLOBAL needs two strings");
                };
                let g = resolve_global(module, name)?;
                self.push_obj(Obj::Global(g));
            }
            b'i' => {
                // INST names its class inline: refuse it by name when it is not allowed,
                // and as an unsupported opcode otherwise (torch never writes it).
                let module = self.line()?;
                let name = self.line()?;
                resolve_global(&module, &name)?;
                return bad("INST is not supported");
            }
            b'R' => {
                // REDUCE
                let args = self.pop()?;
                let callable = self.pop()?;
                let result = self.reduce(callable, args)?;
                self.stack.push(result);
            }
            b'b' => {
                // BUILD. torch writes BUILD only to set attributes of the state dict (its
                // `_metadata`), which do not matter for the weights.
                self.pop()?;
                let target = self.top()?;
                if !matches!(target, Val::Obj(i) if matches!(self.objs[i], Obj::Dict(_))) {
                    return bad(format!(
                        "BUILD on a {} is not supported",
                        kind(&self.objs, target)
                    ));
                }
            }
            b'Q' => {
                // BINPERSID
                let pid = self.pop()?;
                let storage = self.persistent_load(pid)?;
                self.push_obj(Obj::Storage(storage));
            }
            _ => return bad("not supported by this reader (torch.save does not write it)"),
        }
        Ok(None)
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                PickleError::Bad(format!(
                    "needs {n} bytes but only {} remain (truncated?)",
                    self.data.len() - self.pos
                ))
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A little-endian two's-complement integer of `n` bytes (LONG1).
    fn long(&mut self, n: usize) -> Result<i64> {
        if n > 8 {
            return bad(format!("a {n}-byte integer is wider than 64 bits"));
        }
        let b = self.take(n)?;
        let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
            [0xFF; 8]
        } else {
            [0; 8]
        };
        buf[..n].copy_from_slice(b);
        Ok(i64::from_le_bytes(buf))
    }

    fn string(&mut self, n: u64) -> Result<()> {
        let n = usize::try_from(n).map_err(|_| PickleError::Bad("string too long".into()))?;
        let s = std::str::from_utf8(self.take(n)?)
            .map_err(|_| PickleError::Bad("string is not UTF-8".into()))?
            .to_string();
        self.push_obj(Obj::Str(s));
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Result<()> {
        let n = usize::try_from(n).map_err(|_| PickleError::Bad("bytes too long".into()))?;
        self.take(n)?;
        self.push_obj(Obj::Bytes);
        Ok(())
    }

    /// A newline-terminated UTF-8 line (GLOBAL's module and name).
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| PickleError::Bad("unterminated name (truncated?)".into()))?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| PickleError::Bad("name is not UTF-8".into()))?
            .to_string();
        self.pos += n + 1;
        Ok(s)
    }

    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Val> {
        if self.stack.len() <= self.base() {
            return bad("stack underflow");
        }
        self.stack
            .pop()
            .ok_or_else(|| PickleError::Bad("stack underflow".into()))
    }

    fn top(&self) -> Result<Val> {
        if self.stack.len() <= self.base() {
            return bad("stack underflow");
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| PickleError::Bad("stack underflow".into()))
    }

    fn pop_mark(&mut self) -> Result<Vec<Val>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| PickleError::Bad("no MARK to pop to".into()))?;
        // Pops never go below the innermost mark, so it is within the stack.
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn push_obj(&mut self, obj: Obj) {
        self.objs.push(obj);
        self.stack.push(Val::Obj(self.objs.len() - 1));
    }

    fn put(&mut self, i: u32) -> Result<()> {
        let v = self.top()?;
        self.memo.insert(i, v);
        Ok(())
    }

    fn get(&mut self, i: u32) -> Result<()> {
        let v = *self
            .memo
            .get(&i)
            .ok_or_else(|| PickleError::Bad(format!("memo index {i} was never stored")))?;
        self.stack.push(v);
        Ok(())
    }

    fn list_of_top(&mut self) -> Result<&mut Vec<Val>> {
        let target = self.top()?;
        let k = kind(&self.objs, target);
        match target {
            Val::Obj(i) => match &mut self.objs[i] {
                Obj::List(items) => Ok(items),
                _ => bad(format!("appending to a {k}")),
            },
            _ => bad(format!("appending to a {k}")),
        }
    }

    fn dict_of_top(&mut self) -> Result<&mut Vec<(Val, Val)>> {
        let target = self.top()?;
        let k = kind(&self.objs, target);
        match target {
            Val::Obj(i) => match &mut self.objs[i] {
                Obj::Dict(items) => Ok(items),
                _ => bad(format!("setting an item of a {k}")),
            },
            _ => bad(format!("setting an item of a {k}")),
        }
    }

    fn obj(&self, v: Val) -> Option<&Obj> {
        match v {
            Val::Obj(i) => self.objs.get(i),
            _ => None,
        }
    }

    fn str_of(&self, v: Val) -> Option<&str> {
        match self.obj(v) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn tuple_of(&self, v: Val) -> Option<&[Val]> {
        match self.obj(v) {
            Some(Obj::Tuple(items)) => Some(items),
            _ => None,
        }
    }

    /// `('storage', storage_type, key, location, numel)`, as torch.save's `persistent_id`
    /// writes it. The location (`cpu`, `cuda:0`, ...) does not matter: weights are read
    /// from the file.
    fn persistent_load(&self, pid: Val) -> Result<StorageRef> {
        let shape_err = || {
            PickleError::Bad(format!(
                "persistent id is a {}, not ('storage', type, key, location, numel)",
                kind(&self.objs, pid)
            ))
        };
        let items = self.tuple_of(pid).ok_or_else(shape_err)?;
        let [tag, ty, key, _location, numel] = items else {
            return Err(shape_err());
        };
        if self.str_of(*tag) != Some("storage") {
            return Err(shape_err());
        }
        let dtype = match self.obj(*ty) {
            Some(Obj::Global(Global::TypedStorage(dt))) => Some(*dt),
            Some(Obj::Global(Global::UntypedStorage)) => None,
            _ => return bad("persistent id names no storage type"),
        };
        let key = self
            .str_of(*key)
            .ok_or_else(|| PickleError::Bad("storage key is not a string".into()))?;
        self.spend(key.len() + 1)?;
        let key = key.to_string();
        let numel = match *numel {
            Val::Int(n) if n >= 0 => n as u64,
            _ => return bad("storage size is not a non-negative integer"),
        };
        Ok(StorageRef { key, dtype, numel })
    }

    /// REDUCE: `callable(*args)` for allowlisted callables only, computed symbolically.
    fn reduce(&mut self, callable: Val, args: Val) -> Result<Val> {
        let Some(Obj::Global(g)) = self.obj(callable) else {
            return bad(format!("calling a {}", kind(&self.objs, callable)));
        };
        let g = *g;
        let args = self.tuple_of(args).ok_or_else(|| {
            PickleError::Bad(format!(
                "arguments are a {}, not a tuple",
                kind(&self.objs, args)
            ))
        })?;
        self.spend(args.len())?;
        let args = args.to_vec();
        let name = global_name(g);
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return bad("collections.OrderedDict with arguments is not supported");
                }
                self.objs.push(Obj::Dict(Vec::new()));
                Ok(Val::Obj(self.objs.len() - 1))
            }
            Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                let t = self.rebuild_tensor(g == Global::RebuildTensorV3, &args)?;
                self.objs.push(Obj::Tensor(t));
                Ok(Val::Obj(self.objs.len() - 1))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let want = if g == Global::RebuildParameter { 3 } else { 4 };
                if args.len() != want {
                    return bad(format!("{name} takes {want} arguments, got {}", args.len()));
                }
                // A Parameter is its data; requires_grad, hooks and state do not matter here.
                match self.obj(args[0]) {
                    Some(Obj::Tensor(_)) => Ok(args[0]),
                    _ => bad(format!(
                        "{name} of a {}, not a tensor",
                        kind(&self.objs, args[0])
                    )),
                }
            }
            Global::TypedStorage(_) | Global::UntypedStorage | Global::Dtype(_) => {
                bad(format!("`{name}` cannot be called"))
            }
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
    /// backward_hooks[, metadata])`, or v3 with `dtype` after `backward_hooks`.
    fn rebuild_tensor(&self, v3: bool, args: &[Val]) -> Result<TensorRef> {
        let fixed = if v3 { 7 } else { 6 };
        if args.len() != fixed && args.len() != fixed + 1 {
            return bad(format!(
                "tensor rebuild takes {fixed} or {} arguments, got {}",
                fixed + 1,
                args.len()
            ));
        }
        let storage = match self.obj(args[0]) {
            Some(Obj::Storage(s)) => {
                self.spend(s.key.len())?;
                s.clone()
            }
            _ => {
                return bad(format!("tensor storage is a {}", kind(&self.objs, args[0])));
            }
        };
        let dtype = if v3 {
            match self.obj(args[6]) {
                Some(Obj::Global(Global::Dtype(dt))) => *dt,
                _ => return bad("_rebuild_tensor_v3 names no dtype"),
            }
        } else {
            storage.dtype.ok_or_else(|| {
                PickleError::Bad("_rebuild_tensor_v2 of an untyped storage".into())
            })?
        };
        if let Some(dt) = storage.dtype
            && dt != dtype
        {
            return bad("the tensor's dtype differs from its storage's");
        }
        let offset = match args[1] {
            Val::Int(n) if n >= 0 => n as u64,
            _ => return bad("storage offset is not a non-negative integer"),
        };
        let shape = self.int_tuple(args[2], "size")?;
        let strides = self.int_tuple(args[3], "stride")?;
        if shape.len() != strides.len() {
            return bad(format!(
                "size has {} dimensions but stride has {}",
                shape.len(),
                strides.len()
            ));
        }
        // Metadata carries flags such as a negative or conjugate view, which would change
        // the values; an empty dict or None is what plain tensors have.
        if let Some(&meta) = args.get(fixed) {
            let empty = match meta {
                Val::None => true,
                v => matches!(self.obj(v), Some(Obj::Dict(items)) if items.is_empty()),
            };
            if !empty {
                return bad("tensor metadata (a negative or conjugate view) is not supported");
            }
        }
        Ok(TensorRef {
            storage,
            dtype,
            offset,
            shape,
            strides,
        })
    }

    fn int_tuple(&self, v: Val, what: &str) -> Result<Vec<u64>> {
        let items = self.tuple_of(v).ok_or_else(|| {
            PickleError::Bad(format!("{what} is a {}, not a tuple", kind(&self.objs, v)))
        })?;
        self.spend(items.len())?;
        items
            .iter()
            .map(|&x| match x {
                Val::Int(n) if n >= 0 => Ok(n as u64),
                _ => bad(format!(
                    "{what} has an entry that is not a non-negative integer"
                )),
            })
            .collect()
    }

    fn dict_items(&self, v: Val) -> Option<&[(Val, Val)]> {
        match self.obj(v) {
            Some(Obj::Dict(items)) => Some(items),
            _ => None,
        }
    }

    fn is_tensor(&self, v: Val) -> bool {
        matches!(self.obj(v), Some(Obj::Tensor(_)))
    }

    fn state_dict(&self, root: Val) -> Result<Vec<(String, TensorRef)>> {
        let items = self.dict_items(root).ok_or_else(|| {
            PickleError::Bad(format!(
                "the pickle holds a {}, not a state dict",
                kind(&self.objs, root)
            ))
        })?;
        let has_tensors = |items: &[(Val, Val)]| items.iter().any(|&(_, v)| self.is_tensor(v));
        let items = if items.is_empty() || has_tensors(items) {
            items
        } else {
            // A training checkpoint: {"state_dict": {...}, "epoch": 3, ...}.
            WRAPPER_KEYS
                .iter()
                .find_map(|w| {
                    items
                        .iter()
                        .rev()
                        .find(|&&(k, _)| self.str_of(k) == Some(w))
                        .and_then(|&(_, v)| self.dict_items(v))
                        .filter(|inner| has_tensors(inner))
                })
                .ok_or_else(|| {
                    PickleError::Bad(
                        "no tensors at the top level of the pickle, nor under `state_dict`, \
                         `model`, `module` or `model_state_dict`"
                            .into(),
                    )
                })?
        };
        let mut out = Vec::new();
        for &(k, v) in items {
            let Some(Obj::Tensor(t)) = self.obj(v) else {
                continue;
            };
            let name = self.str_of(k).ok_or_else(|| {
                PickleError::Bad(format!(
                    "a tensor is stored under a {} key, not a string",
                    kind(&self.objs, k)
                ))
            })?;
            self.spend(name.len() + t.storage.key.len() + 2 * t.shape.len())?;
            out.push((name.to_string(), t.clone()));
        }
        Ok(out)
    }
}

fn bad_memo() -> PickleError {
    PickleError::Bad("memo is full".into())
}

fn pairs(items: Vec<Val>) -> Result<Vec<(Val, Val)>> {
    if !items.len().is_multiple_of(2) {
        return bad("a dict needs key/value pairs but got an odd number of items");
    }
    Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds protocol-2 pickles by hand.
    pub(crate) struct P(pub Vec<u8>);

    impl P {
        pub fn new() -> Self {
            P(vec![0x80, 2])
        }
        pub fn op(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        pub fn str(self, s: &str) -> Self {
            let mut p = self.op(b"X");
            p.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
            p.op(s.as_bytes())
        }
        pub fn int(self, v: u32) -> Self {
            let mut p = self.op(b"J");
            p.0.extend_from_slice(&v.to_le_bytes());
            p
        }
        pub fn global(self, module: &str, name: &str) -> Self {
            self.op(format!("c{module}\n{name}\n").as_bytes())
        }
        pub fn ints(mut self, v: &[u32]) -> Self {
            self = self.op(b"(");
            for &x in v {
                self = self.int(x);
            }
            self.op(b"t")
        }
        /// A `_rebuild_tensor_v2` call for storage `key` of `numel` elements.
        pub fn tensor(
            self,
            storage: &str,
            key: &str,
            numel: u32,
            offset: u32,
            shape: &[u32],
            strides: &[u32],
        ) -> Self {
            self.global("torch._utils", "_rebuild_tensor_v2")
                .op(b"((")
                .str("storage")
                .global("torch", storage)
                .str(key)
                .str("cpu")
                .int(numel)
                .op(b"tQ")
                .int(offset)
                .ints(shape)
                .ints(strides)
                .op(b"\x89")
                .global("collections", "OrderedDict")
                .op(b")Rt")
                .op(b"R")
        }
    }

    fn read(p: &P) -> Result<Vec<(String, TensorRef)>> {
        read_state_dict(&p.0)
    }

    fn expect_bad(p: &P, what: &str) {
        match read(p) {
            Err(PickleError::Bad(r)) => assert!(r.contains(what), "expected `{what}` in `{r}`"),
            other => panic!("expected Bad({what}), got {other:?}"),
        }
    }

    #[test]
    fn reads_a_state_dict() {
        let p = P::new()
            .global("collections", "OrderedDict")
            .op(b")R(")
            .str("w")
            .tensor("HalfStorage", "0", 6, 0, &[2, 3], &[3, 1])
            .op(b"q\x07") // memoize the tensor...
            .str("tied")
            .op(b"h\x07") // ...and store it again under another name
            .str("not a tensor")
            .int(5)
            .op(b"u.");
        let sd = read(&p).unwrap();
        assert_eq!(sd.len(), 2);
        assert_eq!(sd[0].0, "w");
        assert_eq!(sd[1].0, "tied");
        assert_eq!(sd[0].1, sd[1].1);
        let t = &sd[0].1;
        assert_eq!(t.dtype, TorchDtype::F16);
        assert_eq!(
            (t.shape.clone(), t.strides.clone()),
            (vec![2, 3], vec![3, 1])
        );
        assert_eq!(t.storage.key, "0");
        assert_eq!(t.storage.numel, 6);
    }

    #[test]
    fn unwraps_a_training_checkpoint() {
        let p = P::new()
            .op(b"}(")
            .str("epoch")
            .int(3)
            .str("state_dict")
            .op(b"}(")
            .str("w")
            .tensor("FloatStorage", "0", 2, 0, &[2], &[1])
            .op(b"uu.");
        let sd = read(&p).unwrap();
        assert_eq!(sd[0].0, "w");
        expect_bad(
            &P::new().op(b"}(").str("epoch").int(3).op(b"u."),
            "no tensors",
        );
        assert_eq!(read(&P::new().op(b"}.")).unwrap(), vec![]);
        expect_bad(&P::new().op(b"]."), "holds a list");
    }

    #[test]
    fn refuses_globals_outside_the_allowlist() {
        let cases = [
            ("os", "system"),
            ("posix", "system"),
            ("builtins", "eval"),
            ("builtins", "exec"),
            ("subprocess", "Popen"),
            ("torch", "load"),
            ("torch._utils", "_rebuild_qtensor"),
            ("collections", "defaultdict"),
        ];
        for (m, n) in cases {
            // GLOBAL + REDUCE, as a `__reduce__` to a callable pickles.
            let p = P::new().global(m, n).str("touch x").op(b"\x85R.");
            assert_eq!(read(&p), Err(PickleError::Refused(format!("{m}.{n}"))));
            // STACK_GLOBAL (protocol 4) and INST spell the same call differently.
            let p = P::new().str(m).str(n).op(b"\x93").str("x").op(b"\x85R.");
            assert_eq!(read(&p), Err(PickleError::Refused(format!("{m}.{n}"))));
            let p = P::new()
                .op(b"(")
                .op(format!("i{m}\n{n}\n").as_bytes())
                .op(b".");
            assert_eq!(read(&p), Err(PickleError::Refused(format!("{m}.{n}"))));
        }
        expect_bad(
            &P::new().global("torch", "QInt8Storage").op(b"."),
            "complex or quantized",
        );
    }

    #[test]
    fn refuses_calls_of_allowlisted_non_callables_and_non_globals() {
        expect_bad(
            &P::new().global("torch", "FloatStorage").op(b")R."),
            "cannot be called",
        );
        expect_bad(&P::new().str("os.system").op(b")R."), "calling a str");
        expect_bad(
            &P::new()
                .global("collections", "OrderedDict")
                .int(1)
                .op(b"\x85R."),
            "with arguments",
        );
        // Code-running opcodes that name no global: refused as unsupported.
        for op in [&b"\x81"[..], b"\x92", b"\x82\x01", b"P0\n", b"o"] {
            expect_bad(&P::new().op(b"N)").op(op).op(b"."), "not supported");
        }
    }

    #[test]
    fn malformed_pickles_give_typed_errors() {
        let cases: Vec<(P, &str)> = vec![
            (P::new().op(b"\xff."), "not supported"),
            (P::new().op(b"R."), "stack underflow"),
            (P::new().op(b"N(R."), "stack underflow"),
            (P::new().op(b"t."), "no MARK"),
            (P::new().op(b"N\x87."), "stack underflow"),
            (P::new().op(b"h\x05."), "memo index 5"),
            (P::new().op(b"j\xff\xff\xff\xff."), "memo index 4294967295"),
            (P::new().op(b"q\x00."), "stack underflow"),
            (P::new().op(b"X\xff\xff\xff\xff"), "truncated"),
            (
                P::new().op(b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff"),
                "truncated",
            ),
            (
                P::new().op(b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7f"),
                "truncated",
            ),
            (
                P::new().op(b"\x95\xff\xff\xff\xff\xff\xff\xff\xff"),
                "frame",
            ),
            (P::new().op(b"\x8a\x10"), "wider than 64 bits"),
            (P::new().op(b"X\x02\x00\x00\x00\xff\xfe."), "not UTF-8"),
            (P::new().op(b"cos\nsys"), "unterminated"),
            (P::new().op(b"N"), "without a STOP"),
            (P::new(), "without a STOP"),
            (P(vec![0x80, 9, b'N', b'.']), "protocol 9"),
            (P::new().op(b"(NNNd."), "odd number"),
            (P::new().op(b"NNa."), "appending to a None"),
            (P::new().op(b"]NNs."), "setting an item of a list"),
            (P::new().op(b"NNb."), "BUILD on a None"),
            (P::new().op(b"NQ."), "persistent id is a None"),
            (P::new().int(1).int(2).op(b"\x93."), "two strings"),
            (P::new().op(b"N."), "holds a None"),
            (
                P::new()
                    .op(b"}")
                    .int(1)
                    .tensor("FloatStorage", "0", 1, 0, &[], &[])
                    .op(b"s."),
                "int key",
            ),
        ];
        for (p, what) in &cases {
            expect_bad(p, what);
        }
    }

    #[test]
    fn bad_tensor_arguments_are_errors() {
        let t = |storage: &str, offset: u32, shape: &[u32], strides: &[u32]| {
            P::new()
                .op(b"}")
                .str("w")
                .tensor(storage, "0", 4, offset, shape, strides)
                .op(b"s.")
        };
        expect_bad(&t("FloatStorage", 0, &[2, 2], &[2]), "dimensions");
        // A tensor with a negative stride or offset (never written by torch).
        let p = P::new()
            .op(b"}")
            .str("w")
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .str("storage")
            .global("torch", "FloatStorage")
            .str("0")
            .str("cpu")
            .int(4)
            .op(b"tQ")
            .int(0)
            .ints(&[2])
            .op(b"J\xff\xff\xff\xff\x85")
            .op(b"\x89N")
            .op(b"tRs.");
        expect_bad(&p, "stride has an entry");
        let p = P::new()
            .op(b"}")
            .str("w")
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(NK\x00)")
            .op(b")\x89Nt")
            .op(b"Rs.");
        expect_bad(&p, "tensor storage is a None");
        expect_bad(
            &P::new()
                .global("torch._utils", "_rebuild_parameter")
                .op(b"N\x89N\x87R."),
            "not a tensor",
        );
    }

    #[test]
    fn reads_protocol_4_opcodes() {
        // What torch.save(..., pickle_protocol=4) writes: FRAME, MEMOIZE, STACK_GLOBAL,
        // SHORT_BINUNICODE, plus an untyped storage rebuilt through _rebuild_tensor_v3.
        let mut p = vec![0x80, 4, 0x95];
        p.extend_from_slice(&0u64.to_le_bytes());
        let short = |p: &mut Vec<u8>, s: &str| {
            p.push(0x8c);
            p.push(s.len() as u8);
            p.extend_from_slice(s.as_bytes());
            p.push(0x94);
        };
        p.extend_from_slice(b"}\x94(");
        short(&mut p, "w");
        short(&mut p, "torch._utils");
        short(&mut p, "_rebuild_tensor_v3");
        p.extend_from_slice(b"\x93\x94((");
        short(&mut p, "storage");
        short(&mut p, "torch.storage");
        short(&mut p, "UntypedStorage");
        p.extend_from_slice(b"\x93\x94");
        short(&mut p, "0");
        short(&mut p, "cpu");
        p.extend_from_slice(b"K\x08t\x94QK\x01K\x02\x85\x94K\x01\x85\x94\x89");
        short(&mut p, "collections");
        short(&mut p, "OrderedDict");
        p.extend_from_slice(b"\x93\x94)R\x94");
        short(&mut p, "torch");
        short(&mut p, "uint16");
        p.extend_from_slice(b"\x93\x94t\x94R\x94u.");
        let sd = read_state_dict(&p).unwrap();
        let t = &sd[0].1;
        assert_eq!(t.dtype, TorchDtype::U16);
        assert_eq!(t.storage.dtype, None);
        assert_eq!((t.offset, t.shape.clone()), (1, vec![2]));
    }

    #[test]
    fn integers_decode_like_python() {
        for (bytes, want) in [
            (&b"\x8a\x00"[..], 0i64),
            (b"\x8a\x01\xff", -1),
            (b"\x8a\x02\x00\x01", 256),
            (b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f", i64::MAX),
            (b"J\xfe\xff\xff\xff", -2),
            (b"M\xff\xff", 65535),
        ] {
            let p = P::new().op(b"}").str("k").op(bytes).op(b"s.");
            let mut m = Machine::new(&p.0);
            let root = m.run().unwrap();
            let items = m.dict_items(root).unwrap();
            assert!(matches!(items[0].1, Val::Int(v) if v == want), "{bytes:?}");
        }
    }

    #[test]
    fn cycles_and_deep_nesting_are_harmless() {
        // l = []; l.append(l); {"l": l}
        let p = P::new().op(b"}").str("l").op(b"]q\x00h\x00as.");
        expect_bad(&p, "no tensors");
        // 200k nested tuples: no recursion anywhere, so no stack overflow.
        let mut p = P::new().op(b"}").str("deep").op(b")");
        p.0.extend(std::iter::repeat_n(0x85, 200_000));
        let p = p.op(b"s.");
        expect_bad(&p, "no tensors");
    }

    #[test]
    fn shared_objects_cannot_expand_without_bound() {
        // One tensor with a 100k-dimensional shape, then 400k more entries that reuse the
        // memoized callable and arguments (16 bytes each): without the budget every entry
        // would copy the shape.
        let dims = vec![1u32; 100_000];
        let mut p = P::new()
            .op(b"}(")
            .str("w")
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"q\x00((")
            .str("storage")
            .global("torch", "FloatStorage")
            .str("0")
            .str("cpu")
            .int(1)
            .op(b"tQ")
            .int(0)
            .ints(&dims)
            .ints(&dims)
            .op(b"\x89Nt")
            .op(b"q\x01R");
        for i in 0..400_000u32 {
            p = p.str(&format!("{i:06x}")).op(b"h\x00h\x01R");
        }
        let p = p.op(b"u.");
        expect_bad(&p, "pickle bomb");
    }

    #[test]
    fn random_mutations_never_panic() {
        let good = P::new()
            .global("collections", "OrderedDict")
            .op(b")R(")
            .str("w")
            .tensor("HalfStorage", "0", 6, 0, &[2, 3], &[3, 1])
            .op(b"q\x07")
            .str("tied")
            .op(b"h\x07")
            .op(b"u.");
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..20_000 {
            let mut b = good.0.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            let cut = (next() % (b.len() as u64 + 1)) as usize;
            let _ = read_state_dict(&b[..cut.max(b.len() / 2)]);
        }
    }
}
