//! An engine compiled once for every component built on it.
//!
//! A JavaScript handler built by componentize-js is a 12 MB component whose
//! first core module, the StarlingMonkey engine, is the same in every
//! handler but for Wizer's snapshot of its state: the size of its memory,
//! the values of its globals and its data. Compiling the whole component on
//! every deploy compiles the same engine again (1.3 s with Winch, 6 s with
//! Cranelift on the 2-core machine). [`split`] takes the engine out:
//!
//! - **The state moves into the shim.** wit-component's shim is the
//!   component's first core instance, made before the others from a module
//!   with no imports. It gains the engine's memory, globals and data
//!   segments, and exports the memory as `hearth:memory` and the globals as
//!   `hearth:global<N>`.
//! - **The engine imports its state.** Its memory (with a minimum of zero,
//!   so that handlers of any size share it) and its globals become imports
//!   from `hearth:state`, in the same index order, and its data leaves it.
//!   What remains is the same bytes for every handler on that engine.
//! - **The component imports the engine.** The engine's module definition
//!   becomes a core module type and an import named `hearth-engine-sha`
//!   and the engine's SHA-256, at the same place, so that no index moves;
//!   the engine's instantiation gets the shim's instance as `hearth:state`.
//!
//! The runtime compiles the engine once, defines it in the linker under
//! that name, and compiles only the rest for each new handler, in tens of
//! milliseconds. The split applies only to a component of exactly this
//! shape: one large core module that defines the only memory, instantiated
//! once; globals set by constants; data that is all active at constant
//! offsets; and a shim to take them. Anything else comes back as
//! [`NotSplit`] with the reason, and the component is compiled whole. The
//! engine's code must also not use `memory.init` or `data.drop` (which need
//! its data): compiling the engine refuses such code, and the runtime then
//! compiles the whole too.

use std::borrow::Cow;

use std::collections::HashMap;
use wasm_encoder::{
    ComponentImportSection, ComponentTypeRef, ConstExpr, CoreTypeSection, Encode, EntityType, ExportKind,
    ExportSection, GlobalSection, ImportSection, InstanceSection, MemorySection, ModuleArg, ModuleType,
};

use wasmparser::{
    BinaryReader, ComponentAlias, ComponentAliasSectionReader, ComponentExternalKind,
    ComponentImportSectionReader, ComponentOuterAliasKind, ComponentTypeRef as ComponentRef, DataKind,
    DataSectionReader, ExportSectionReader, ExternalKind, FunctionSectionReader, GlobalSectionReader,
    ImportSectionReader, Instance, InstanceSectionReader, MemorySectionReader, Operator, TableSectionReader,
    TypeRef, TypeSectionReader,
};

/// What the component's import of its engine is called: this and the
/// engine module's SHA-256 in hex.
/// Its `v1` is the version of the split: a change to what [`split`] makes
/// must change it, so that a compiled rest cached by an older hearth is not
/// linked with an engine split another way.
pub(crate) const ENGINE_IMPORT: &str = "hearth-engine-v1-sha";
/// The most core modules and core instances a component may have, as
/// wasmparser's validator allows: more is refused before any other work.
const MOST: usize = 1000;
/// The module the engine imports its state from.
const STATE: &str = "hearth:state";
/// The shim's export of the engine's memory.
const MEMORY: &str = "hearth:memory";
/// The shim's exports of the engine's globals: this and their index.
const GLOBAL: &str = "hearth:global";

const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
const MODULE_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// A component taken apart by [`split`].
pub(crate) struct Split {
    /// The engine: a core module, the same bytes for every component built
    /// on it.
    pub(crate) engine: Vec<u8>,
    /// The engine's SHA-256, in hex.
    pub(crate) engine_sha256: String,
    /// The component, importing the engine as [`Split::import`].
    pub(crate) rest: Vec<u8>,
}

#[cfg(test)]
impl Split {
    /// The name the rest imports the engine by.
    pub(crate) fn import(&self) -> String {
        import_name(&self.engine_sha256)
    }
}

/// The name a component imports the engine with SHA-256 `sha256` by.
pub(crate) fn import_name(sha256: &str) -> String {
    format!("{ENGINE_IMPORT}{sha256}")
}

/// Why a component was not split: it is compiled whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotSplit(Cow<'static, str>);

impl From<wasmparser::BinaryReaderError> for NotSplit {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        NotSplit(format!("it does not parse: {e}").into())
    }
}

impl NotSplit {
    /// Its engine was split before, and would not compile alone or link.
    pub(crate) fn refused() -> NotSplit {
        not("its engine did not compile alone or link into a component before")
    }
}

fn not(why: &'static str) -> NotSplit {
    NotSplit(Cow::Borrowed(why))
}

/// Splits `component` into its engine and the rest, if it has the shape the
/// module's doc describes and its engine, without its state, has at least
/// `at_least` bytes (below that the whole compiles fast anyway, and sharing
/// gains nothing: a Python handler's memory-defining module is 57 KB of
/// code and megabytes of data).
pub(crate) fn split(component: &[u8], at_least: usize) -> Result<Split, NotSplit> {
    let sections = sections(component, COMPONENT_HEADER).ok_or(not("it is not a component"))?;
    if component.len() < at_least {
        return Err(not("it is small enough to compile whole"));
    }

    // The index spaces that the split changes in place: core modules (from
    // module sections only: none imported or aliased) and core types (none
    // before).
    let mut modules = Vec::new();
    let mut instances = Vec::new();
    for (at, section) in sections.iter().enumerate() {
        match section.id {
            1 => modules.push(at),
            2 => {
                let reader = InstanceSectionReader::new(reader(section.content))?;
                for instance in reader {
                    instances.push((at, instance?));
                }
            }
            3 => return Err(not("it defines core types")),
            6 => {
                for alias in ComponentAliasSectionReader::new(reader(section.content))? {
                    match alias? {
                        ComponentAlias::InstanceExport { kind: ComponentExternalKind::Module, .. }
                        | ComponentAlias::Outer { kind: ComponentOuterAliasKind::CoreModule, .. } => {
                            return Err(not("it aliases a core module"));
                        }
                        ComponentAlias::Outer { kind: ComponentOuterAliasKind::CoreType, .. } => {
                            return Err(not("it aliases a core type"));
                        }
                        _ => {}
                    }
                }
            }
            10 => {
                for import in ComponentImportSectionReader::new(reader(section.content))? {
                    if matches!(import?.ty, ComponentRef::Module(_)) {
                        return Err(not("it imports a core module"));
                    }
                }
            }
            _ => {}
        }
    }

    if modules.len() > MOST || instances.len() > MOST {
        return Err(not("it has more core modules or instances than a component may"));
    }
    // Which instances each module made.
    let mut made: HashMap<u32, Vec<usize>> = HashMap::new();
    for (index, (_, instance)) in instances.iter().enumerate() {
        if let Instance::Instantiate { module_index, .. } = instance {
            made.entry(*module_index).or_default().push(index);
        }
    }
    let instantiated = |module: u32| made.get(&module).map_or(&[][..], Vec::as_slice);

    // The engine: the one module that defines a memory.
    let mut engines = modules.iter().enumerate().filter(|(_, at)| defines(sections[**at].content, 5));
    let (engine, engine_at) = match (engines.next(), engines.next()) {
        (Some((index, at)), None) => (index as u32, *at),
        (None, _) => return Err(not("no core module defines a memory")),
        (Some(_), Some(_)) => return Err(not("more than one core module defines a memory")),
    };
    let [engine_instance] = *instantiated(engine) else {
        return Err(not("its engine is not instantiated exactly once"));
    };

    // The shim: made before the engine, from a module with no imports that
    // has no state of its own, and only once.
    let shim = instances[..engine_instance].iter().enumerate().find_map(|(index, (_, instance))| {
        let Instance::Instantiate { module_index, args } = instance else { return None };
        let at = *modules.get(*module_index as usize)?;
        // No imports, memory, globals or data (so not the engine either).
        let stateless = module_sections(sections[at].content)
            .is_some_and(|own| !own.iter().any(|s| matches!(s.id, 2 | 5 | 6 | 11 | 12)));
        (args.is_empty() && stateless && instantiated(*module_index).len() == 1).then_some((index as u32, at))
    });
    let Some((shim_instance, shim_at)) = shim else {
        return Err(not("it has no shim to take the engine's state"));
    };

    let (engine_module, state, module_type) = take_state(sections[engine_at].content)?;
    if engine_module.len() < at_least {
        return Err(not("its engine, without its state, is small enough to compile whole"));
    }
    let shim_module = give_state(sections[shim_at].content, &state)?;
    let engine_sha256 = hearth_wasm::sha256_hex(&engine_module);
    let import = import_name(&engine_sha256);

    let mut rest = COMPONENT_HEADER.to_vec();
    for (at, section) in sections.iter().enumerate() {
        if at == engine_at {
            let mut types = CoreTypeSection::new();
            types.ty().module(&module_type);
            put(&mut rest, 3, &types);
            let mut imports = ComponentImportSection::new();
            imports.import(import.as_str(), ComponentTypeRef::Module(0));
            put(&mut rest, 10, &imports);
        } else if at == shim_at {
            put_raw(&mut rest, 1, &shim_module);
        } else if section.id == 2 && at == instances[engine_instance].0 {
            put(&mut rest, 2, &with_state(&instances, at, engine, shim_instance)?);
        } else {
            put_raw(&mut rest, section.id, section.content);
        }
    }
    Ok(Split { engine: engine_module, engine_sha256, rest })
}

/// The core instance section at `at`, with the engine's instantiation given
/// the shim's instance as `hearth:state`.
fn with_state(
    instances: &[(usize, Instance<'_>)],
    at: usize,
    engine: u32,
    shim_instance: u32,
) -> Result<InstanceSection, NotSplit> {
    let mut section = InstanceSection::new();
    for (_, instance) in instances.iter().filter(|(section, _)| *section == at) {
        match instance {
            Instance::Instantiate { module_index, args } => {
                let mut args: Vec<(&str, ModuleArg)> =
                    args.iter().map(|arg| (arg.name, ModuleArg::Instance(arg.index))).collect();
                if *module_index == engine {
                    args.push((STATE, ModuleArg::Instance(shim_instance)));
                }
                section.instantiate(*module_index, args);
            }
            Instance::FromExports(exports) => {
                let items = exports
                    .iter()
                    .map(|e| Ok((e.name, export_kind(e.kind)?, e.index)))
                    .collect::<Result<Vec<_>, NotSplit>>()?;
                section.export_items(items);
            }
        }
    }
    Ok(section)
}

/// What moves from the engine into the shim.
struct State<'a> {
    memory: wasm_encoder::MemoryType,
    globals: Vec<(wasm_encoder::GlobalType, ConstExpr)>,
    data_count: Option<&'a [u8]>,
    data: Option<&'a [u8]>,
}

/// The engine module without its state, the state, and the engine's type.
fn take_state(module: &[u8]) -> Result<(Vec<u8>, State<'_>, ModuleType), NotSplit> {
    let sections = module_sections(module).ok_or(not("its engine is not a well-formed core module"))?;
    let mut types = Vec::new();
    let mut imports = Vec::new();
    let (mut funcs, mut tables, mut globals) = (Vec::new(), Vec::new(), Vec::new());
    // The memory as the engine imports it, and as the shim defines it.
    let mut memory = None;
    let (mut state_globals, mut data_count, mut data) = (Vec::new(), None, None);
    let mut exports = Vec::new();
    for section in &sections {
        let content = reader(section.content);
        match section.id {
            1 => {
                for group in TypeSectionReader::new(content)? {
                    let group = group?;
                    if group.is_explicit_rec_group() {
                        return Err(not("its engine has recursive type groups"));
                    }
                    for ty in group.into_types() {
                        let func = match &ty.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(func)
                                if ty.is_final && ty.supertype_idx.is_none() && !ty.composite_type.shared =>
                            {
                                func.clone()
                            }
                            _ => return Err(not("its engine has types other than functions")),
                        };
                        let params =
                            func.params().iter().map(|t| val_type(*t)).collect::<Result<Vec<_>, _>>()?;
                        let results =
                            func.results().iter().map(|t| val_type(*t)).collect::<Result<Vec<_>, _>>()?;
                        types.push((params, results));
                    }
                }
            }
            2 => {
                for import in ImportSectionReader::new(content)?.into_imports() {
                    let import = import?;
                    if import.module == STATE {
                        return Err(not("its engine imports from hearth:state already"));
                    }
                    let ty = match import.ty {
                        TypeRef::Func(t) => {
                            funcs.push(t);
                            EntityType::Function(t)
                        }
                        TypeRef::Table(t) => {
                            let t = table_type(&t)?;
                            tables.push(t);
                            EntityType::Table(t)
                        }
                        TypeRef::Global(t) => {
                            let t = global_type(&t)?;
                            globals.push(t);
                            EntityType::Global(t)
                        }
                        TypeRef::Memory(_) => return Err(not("its engine imports a memory")),
                        TypeRef::Tag(_) | TypeRef::FuncExact(_) => {
                            return Err(not("its engine imports tags or exact functions"));
                        }
                    };
                    imports.push((import.module.to_owned(), import.name.to_owned(), ty));
                }
            }
            3 => {
                for ty in FunctionSectionReader::new(content)? {
                    funcs.push(ty?);
                }
            }
            4 => {
                for table in TableSectionReader::new(content)? {
                    tables.push(table_type(&table?.ty)?);
                }
            }
            5 => {
                let mut memories = MemorySectionReader::new(content)?.into_iter();
                match (memories.next(), memories.next()) {
                    (Some(only), None) => {
                        let only = memory_type(&only?);
                        memory = Some((wasm_encoder::MemoryType { minimum: 0, ..only }, only));
                    }
                    _ => return Err(not("its engine defines more than one memory")),
                }
            }
            6 => {
                for global in GlobalSectionReader::new(content)? {
                    let global = global?;
                    let ty = global_type(&global.ty)?;
                    globals.push(ty);
                    state_globals.push((ty, constant(&global.init_expr)?));
                }
            }
            7 => {
                for export in ExportSectionReader::new(content)? {
                    let export = export?;
                    exports.push((export.name.to_owned(), export.kind, export.index));
                }
            }
            11 => {
                for data in DataSectionReader::new(content)? {
                    match data?.kind {
                        DataKind::Active { memory_index: 0, offset_expr } => {
                            constant(&offset_expr)?;
                        }
                        _ => return Err(not("its engine has data that is not placed at a constant offset")),
                    }
                }
                data = Some(section.content);
            }
            12 => data_count = Some(section.content),
            13 => return Err(not("its engine defines tags")),
            _ => {}
        }
    }
    let (memory, defined) = memory.ok_or(not("its engine defines no memory"))?;
    let state = State { memory: defined, globals: state_globals, data_count, data };

    // The engine: its state imported, in the index order it was defined in.
    imports.push((STATE.to_owned(), MEMORY.to_owned(), EntityType::Memory(memory)));
    for (i, (global, _)) in state.globals.iter().enumerate() {
        imports.push((STATE.to_owned(), global_name(i), EntityType::Global(*global)));
    }
    let mut import_section = ImportSection::new();
    for (module, name, ty) in &imports {
        import_section.import(module, name, *ty);
    }
    let kept: Vec<Piece> = sections
        .iter()
        .filter(|s| !matches!(s.id, 2 | 5 | 6 | 11 | 12))
        .map(|s| Piece::Raw(s.id, s.content))
        .collect();
    let engine = assemble(kept, vec![Piece::encoded(2, &import_section)]);

    // Its type, as the component declares the import.
    let mut ty = ModuleType::new();
    for (params, results) in &types {
        ty.ty().function(params.iter().copied(), results.iter().copied());
    }
    for (module, name, entity) in &imports {
        ty.import(module, name, *entity);
    }
    let missing = || not("its engine exports an item it does not have");
    for (name, kind, index) in &exports {
        let i = *index as usize;
        let entity = match kind {
            ExternalKind::Func => EntityType::Function(*funcs.get(i).ok_or_else(missing)?),
            ExternalKind::Table => EntityType::Table(*tables.get(i).ok_or_else(missing)?),
            ExternalKind::Memory if i == 0 => EntityType::Memory(memory),
            ExternalKind::Global => EntityType::Global(*globals.get(i).ok_or_else(missing)?),
            _ => return Err(not("its engine exports tags or exact functions")),
        };
        ty.export(name, entity);
    }
    Ok((engine, state, ty))
}

/// The shim module with the engine's state in it.
fn give_state(module: &[u8], state: &State<'_>) -> Result<Vec<u8>, NotSplit> {
    let sections = module_sections(module).ok_or(not("its shim is not a well-formed core module"))?;
    let mut exports = ExportSection::new();
    let mut kept = Vec::new();
    for section in &sections {
        if section.id == 7 {
            for export in ExportSectionReader::new(reader(section.content))? {
                let export = export?;
                if export.name == MEMORY || export.name.starts_with(GLOBAL) {
                    return Err(not("its shim exports a name the split needs"));
                }
                exports.export(export.name, export_kind(export.kind)?, export.index);
            }
        } else {
            kept.push(Piece::Raw(section.id, section.content));
        }
    }
    exports.export(MEMORY, ExportKind::Memory, 0);
    let mut memories = MemorySection::new();
    memories.memory(state.memory);
    let mut globals = GlobalSection::new();
    for (i, (ty, init)) in state.globals.iter().enumerate() {
        globals.global(*ty, init);
        exports.export(&global_name(i), ExportKind::Global, i as u32);
    }
    let mut added = vec![Piece::encoded(5, &memories), Piece::encoded(7, &exports)];
    if !state.globals.is_empty() {
        added.push(Piece::encoded(6, &globals));
    }
    added.extend(state.data_count.map(|content| Piece::Raw(12, content)));
    added.extend(state.data.map(|content| Piece::Raw(11, content)));
    Ok(assemble(kept, added))
}

fn global_name(i: usize) -> String {
    format!("{GLOBAL}{i}")
}

/// A section of a module or component, as found.
struct Section<'a> {
    id: u8,
    content: &'a [u8],
}

/// The sections of `bytes`, if it starts with `header` and frames well.
fn sections(bytes: &[u8], header: [u8; 8]) -> Option<Vec<Section<'_>>> {
    let mut rest = bytes.strip_prefix(&header[..])?;
    let mut sections = Vec::new();
    while let [id, after @ ..] = rest {
        let (size, after) = leb128(after)?;
        let content = after.get(..size)?;
        sections.push(Section { id: *id, content });
        rest = &after[size..];
    }
    Some(sections)
}

fn leb128(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().enumerate().take(5) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// The sections of the core module `bytes`, if it frames well and its
/// sections other than custom ones are known, each at most once, in the
/// order the core spec requires: the split rewrites some of them, and must
/// not make a module valid that was not.
fn module_sections(bytes: &[u8]) -> Option<Vec<Section<'_>>> {
    let sections = sections(bytes, MODULE_HEADER)?;
    let mut last = None;
    for section in sections.iter().filter(|s| s.id != 0) {
        let rank = rank(section.id)?;
        if last.is_some_and(|last| rank <= last) {
            return None;
        }
        last = Some(rank);
    }
    Some(sections)
}

/// Whether the core module `module` has a section `id`.
fn defines(module: &[u8], id: u8) -> bool {
    module_sections(module).is_some_and(|sections| sections.iter().any(|s| s.id == id))
}

fn reader(content: &[u8]) -> BinaryReader<'_> {
    BinaryReader::new(content, 0)
}

/// A section to write: found, or encoded here.
enum Piece<'a> {
    Raw(u8, &'a [u8]),
    /// The encoded section: its size, then its content.
    Encoded(u8, Vec<u8>),
}

impl Piece<'_> {
    fn encoded(id: u8, section: &impl Encode) -> Piece<'static> {
        let mut bytes = Vec::new();
        section.encode(&mut bytes);
        Piece::Encoded(id, bytes)
    }

    fn id(&self) -> u8 {
        match self {
            Piece::Raw(id, _) | Piece::Encoded(id, _) => *id,
        }
    }
}

/// Where section `id` goes in a module: the order the core spec requires
/// (data count before code, tags before globals); custom sections have none.
fn rank(id: u8) -> Option<u8> {
    const ORDER: [u8; 13] = [1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11];
    ORDER.iter().position(|o| *o == id).map(|p| p as u8)
}

/// A core module of `kept` sections, in their order, with `added` ones put
/// where the order says: before the first kept section that comes after,
/// else after the last one that is not custom.
fn assemble<'a>(mut kept: Vec<Piece<'a>>, added: Vec<Piece<'a>>) -> Vec<u8> {
    for piece in added {
        let rank_of = rank(piece.id());
        let at = kept
            .iter()
            .position(|k| rank(k.id()).is_some_and(|r| Some(r) > rank_of))
            .unwrap_or_else(|| kept.iter().rposition(|k| rank(k.id()).is_some()).map_or(0, |p| p + 1));
        kept.insert(at, piece);
    }
    let mut module = MODULE_HEADER.to_vec();
    for piece in kept {
        match piece {
            Piece::Raw(id, content) => put_raw(&mut module, id, content),
            Piece::Encoded(id, bytes) => {
                module.push(id);
                module.extend_from_slice(&bytes);
            }
        }
    }
    module
}

fn put(out: &mut Vec<u8>, id: u8, section: &impl Encode) {
    out.push(id);
    section.encode(out);
}

fn put_raw(out: &mut Vec<u8>, id: u8, content: &[u8]) {
    out.push(id);
    content.len().encode(out);
    out.extend_from_slice(content);
}

/// `expr`, if it is a single constant.
fn constant(expr: &wasmparser::ConstExpr<'_>) -> Result<ConstExpr, NotSplit> {
    let mut ops = expr.get_operators_reader();
    let first = ops.read()?;
    let end = ops.read()?;
    if !matches!(end, Operator::End) || !ops.eof() {
        return Err(not("its engine has an initializer that is not a single constant"));
    }
    Ok(match first {
        Operator::I32Const { value } => ConstExpr::i32_const(value),
        Operator::I64Const { value } => ConstExpr::i64_const(value),
        Operator::F32Const { value } => ConstExpr::f32_const(f32::from_bits(value.bits()).into()),
        Operator::F64Const { value } => ConstExpr::f64_const(f64::from_bits(value.bits()).into()),
        _ => return Err(not("its engine has an initializer that is not a single constant")),
    })
}

fn val_type(ty: wasmparser::ValType) -> Result<wasm_encoder::ValType, NotSplit> {
    use wasm_encoder::ValType as V;
    Ok(match ty {
        wasmparser::ValType::I32 => V::I32,
        wasmparser::ValType::I64 => V::I64,
        wasmparser::ValType::F32 => V::F32,
        wasmparser::ValType::F64 => V::F64,
        wasmparser::ValType::V128 => V::V128,
        wasmparser::ValType::Ref(r) => V::Ref(ref_type(r)?),
    })
}

fn ref_type(ty: wasmparser::RefType) -> Result<wasm_encoder::RefType, NotSplit> {
    match ty {
        wasmparser::RefType::FUNCREF => Ok(wasm_encoder::RefType::FUNCREF),
        wasmparser::RefType::EXTERNREF => Ok(wasm_encoder::RefType::EXTERNREF),
        _ => Err(not("its engine uses reference types other than funcref and externref")),
    }
}

fn table_type(ty: &wasmparser::TableType) -> Result<wasm_encoder::TableType, NotSplit> {
    Ok(wasm_encoder::TableType {
        element_type: ref_type(ty.element_type)?,
        table64: ty.table64,
        minimum: ty.initial,
        maximum: ty.maximum,
        shared: ty.shared,
    })
}

fn memory_type(ty: &wasmparser::MemoryType) -> wasm_encoder::MemoryType {
    wasm_encoder::MemoryType {
        minimum: ty.initial,
        maximum: ty.maximum,
        memory64: ty.memory64,
        shared: ty.shared,
        page_size_log2: ty.page_size_log2,
    }
}

fn global_type(ty: &wasmparser::GlobalType) -> Result<wasm_encoder::GlobalType, NotSplit> {
    Ok(wasm_encoder::GlobalType {
        val_type: val_type(ty.content_type)?,
        mutable: ty.mutable,
        shared: ty.shared,
    })
}

fn export_kind(kind: ExternalKind) -> Result<ExportKind, NotSplit> {
    Ok(match kind {
        ExternalKind::Func => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
        ExternalKind::FuncExact => return Err(not("it exports exact functions")),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Engine, Module, Store};

    use super::*;

    /// A component of wit-component's shape: a shim whose table the
    /// engine calls back through, an engine with state, a fixup that fills
    /// the shim's table with an engine function. `count`, `byte` and
    /// `pages` are the engine's state, as a snapshot would set them;
    /// `extra` goes into the engine's module as it is.
    pub(crate) fn component(count: i32, byte: u8, pages: u32, extra: &str) -> Vec<u8> {
        with_outside(count, byte, pages, extra, "")
    }

    /// [`component`], with `outside` among the component's definitions.
    pub(crate) fn with_outside(count: i32, byte: u8, pages: u32, extra: &str, outside: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(component
  (core module $shim
    (type $t (func (param i32) (result i32)))
    (table (export "$imports") 1 1 funcref)
    (func (export "0") (type $t) local.get 0 i32.const 0 call_indirect (type $t)))
  (core module $engine
    (import "shim" "0" (func $double (param i32) (result i32)))
    (memory (export "memory") {pages})
    (global $count (mut i32) (i32.const {count}))
    (global (export "step") i64 (i64.const 7))
    (data (i32.const 16) "\{byte:02x}")
    (func (export "run") (result i32)
      global.get $count i32.const 1 i32.add global.set $count
      global.get $count i32.const 16 i32.load8_u i32.add
      call $double)
    (func (export "double") (param i32) (result i32) local.get 0 i32.const 2 i32.mul)
    (func (export "pages") (result i32) memory.size)
    {extra})
  (core module $fixup
    (import "" "double" (func (param i32) (result i32)))
    (import "" "$imports" (table 1 1 funcref))
    (elem (i32.const 0) func 0))
  (core instance $s (instantiate $shim))
  (core instance $e (instantiate $engine (with "shim" (instance $s))))
  (core instance (instantiate $fixup
    (with "" (instance (export "double" (func $e "double")) (export "$imports" (table $s "$imports"))))))
  {outside}
  (func (export "run") (result u32) (canon lift (core func $e "run")))
  (func (export "pages") (result u32) (canon lift (core func $e "pages"))))"#
        ))
        .expect("the test component parses")
    }

    /// What `run` answers twice and `pages` once, in one instance of
    /// `component`, with `engine` in the linker if given.
    fn answers(component: &[u8], engine: Option<(&str, &[u8])>) -> (u32, u32, u32) {
        let wasm = Engine::default();
        let component = Component::new(&wasm, component).expect("it compiles");
        let mut linker = Linker::<()>::new(&wasm);
        if let Some((name, module)) = engine {
            let module = Module::new(&wasm, module).expect("the engine compiles");
            linker.root().module(name, &module).expect("the engine is defined");
        }
        let mut store = Store::new(&wasm, ());
        let instance = linker.instantiate(&mut store, &component).expect("it instantiates");
        let run = instance.get_typed_func::<(), (u32,)>(&mut store, "run").unwrap();
        let pages = instance.get_typed_func::<(), (u32,)>(&mut store, "pages").unwrap();
        let mut call = |f: &wasmtime::component::TypedFunc<(), (u32,)>| {
            let (answer,) = f.call(&mut store, ()).expect("it runs");
            answer
        };
        (call(&run), call(&run), call(&pages))
    }

    #[test]
    fn the_rest_with_its_engine_answers_as_the_whole_component_does() {
        for (count, byte, pages) in [(40, 2, 1), (50, 3, 2)] {
            let whole = component(count, byte, pages, "");
            let split = split(&whole, 0).expect("it splits");
            let expected = answers(&whole, None);
            let doubled = |n: i32| (2 * (n + i32::from(byte))) as u32;
            assert_eq!(expected, (doubled(count + 1), doubled(count + 2), pages));
            assert_eq!(answers(&split.rest, Some((&split.import(), &split.engine))), expected);
        }
    }

    #[test]
    fn components_that_differ_only_in_state_share_one_engine() {
        let one = split(&component(40, 2, 1, ""), 0).unwrap();
        let other = split(&component(50, 3, 2, ""), 0).unwrap();
        assert_eq!(one.engine, other.engine);
        assert_eq!(one.engine_sha256, hearth_wasm::sha256_hex(&one.engine));
        assert_ne!(one.rest, other.rest);
        assert!(one.import().starts_with(ENGINE_IMPORT) && one.import().ends_with(&one.engine_sha256));
        // Another engine is another engine.
        let changed = split(&component(40, 2, 1, "(func (export \"more\"))"), 0).unwrap();
        assert_ne!(changed.engine_sha256, one.engine_sha256);
    }

    #[test]
    fn the_rest_does_not_run_without_its_engine() {
        let split = split(&component(40, 2, 1, ""), 0).unwrap();
        let wasm = Engine::default();
        let rest = Component::new(&wasm, &split.rest).expect("the rest compiles alone");
        let linked = Linker::<()>::new(&wasm).instantiate_pre(&rest).map(|_| ()).unwrap_err();
        assert!(format!("{linked:#}").contains(&split.import()), "{linked:#}");
    }

    #[test]
    fn a_component_whose_engine_is_small_is_compiled_whole() {
        let whole = component(40, 2, 1, "");
        let said = split(&whole, whole.len()).err().unwrap();
        assert!(said.to_string().contains("small"), "{said}");
    }

    #[test]
    fn an_engine_whose_state_cannot_move_is_compiled_whole() {
        for (extra, why) in [
            ("(data \"passive\")", "constant offset"),
            ("(global $g2 (mut i32) (global.get 1))", "single constant"),
            ("(tag)", "tags"),
        ] {
            let said = split(&component(40, 2, 1, extra), 0).err().unwrap_or_else(|| panic!("{extra} split"));
            assert!(said.to_string().contains(why), "{extra}: {said}");
        }
    }

    #[test]
    fn a_module_with_sections_out_of_order_or_twice_is_not_rewritten() {
        let module = |ids: &[u8]| {
            let mut bytes = MODULE_HEADER.to_vec();
            for id in ids {
                bytes.extend_from_slice(&[*id, 0]);
            }
            bytes
        };
        assert!(module_sections(&module(&[0, 1, 0, 5, 13, 6, 12, 10, 11, 0])).is_some());
        for bad in [&[11, 10][..], &[11, 11], &[5, 5], &[10, 12], &[6, 13], &[14]] {
            assert!(module_sections(&module(bad)).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_component_with_core_modules_from_elsewhere_or_too_many_instances_is_compiled_whole() {
        let aliased = wat::parse_str(
            r#"(component
                (import "i" (instance $i (export "m" (core module))))
                (alias export $i "m" (core module $m))
                (core module $e (memory 1))
                (core instance (instantiate $e)))"#,
        )
        .unwrap();
        assert!(split(&aliased, 0).err().unwrap().to_string().contains("aliases a core module"));
        let many = format!(
            "(component (core module $m) (core module $e (memory 1)) {} (core instance (instantiate $e)))",
            "(core instance (instantiate $m))".repeat(MOST)
        );
        let said = split(&wat::parse_str(many).unwrap(), 0).err().unwrap();
        assert!(said.to_string().contains("more core modules or instances"), "{said}");
    }

    #[test]
    fn what_is_not_a_component_of_this_shape_is_compiled_whole() {
        let module = wat::parse_str("(module (memory 1))").unwrap();
        assert_eq!(split(&module, 0).err().unwrap().to_string(), "it is not a component");
        let no_memory = wat::parse_str("(component (core module))").unwrap();
        assert!(split(&no_memory, 0).err().unwrap().to_string().contains("no core module defines a memory"));
        let two = wat::parse_str("(component (core module (memory 1)) (core module (memory 1)))").unwrap();
        assert!(split(&two, 0).err().unwrap().to_string().contains("more than one"));
        let not_made = wat::parse_str("(component (core module (memory 1)))").unwrap();
        assert!(split(&not_made, 0).err().unwrap().to_string().contains("not instantiated exactly once"));
        let no_shim =
            wat::parse_str("(component (core module $e (memory 1)) (core instance (instantiate $e)))");
        assert!(split(&no_shim.unwrap(), 0).err().unwrap().to_string().contains("no shim"));
    }
}
