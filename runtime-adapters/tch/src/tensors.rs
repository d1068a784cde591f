//! The host's tensor handles: every tensor a plugin can name is registered here, with who owns
//! it. Ids are never reused, so a stale id is an error, never a dangling pointer.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        LazyLock,
    },
};

use birdbone_host_api::{self as api, DType, DeviceKind, TensorId, TensorView, MAX_DIMS};
use parking_lot::Mutex;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, HostError, Result};

/// Who may write a registered tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Lent to a plugin for one call (a weight, a gradient): read-only for it.
    Host,
    /// Created for a plugin: it may write it and must release it.
    Plugin,
}

struct Entry {
    tensor: Tensor,
    owner: Owner,
}

struct Store {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Entry>>,
}

static STORE: LazyLock<Store> = LazyLock::new(|| Store {
    next: AtomicU64::new(1),
    map: Mutex::new(HashMap::new()),
});

/// The ABI element type of a libtorch kind.
pub fn dtype_of(kind: Kind) -> Option<DType> {
    Some(match kind {
        Kind::Float => DType::F32,
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Double => DType::F64,
        Kind::Uint8 => DType::U8,
        Kind::Int8 => DType::I8,
        Kind::Int => DType::I32,
        Kind::Int64 => DType::I64,
        Kind::Bool => DType::Bool,
        _ => return None,
    })
}

/// The libtorch kind of an ABI element type.
pub fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::F64 => Kind::Double,
        DType::U8 => Kind::Uint8,
        DType::I8 => Kind::Int8,
        DType::I32 => Kind::Int,
        DType::I64 => Kind::Int64,
        DType::Bool => Kind::Bool,
    }
}

/// The ABI device of a libtorch device.
pub fn device_of(device: Device) -> api::Device {
    match device {
        Device::Cuda(i) => api::Device::cuda(i as u32),
        _ => api::Device::CPU,
    }
}

/// The libtorch device of an ABI device.
pub fn torch_device(device: api::Device) -> Device {
    match device.kind {
        DeviceKind::Cpu => Device::Cpu,
        DeviceKind::Cuda => Device::Cuda(device.index as usize),
    }
}

/// A DLPack-shaped view of a tensor.
pub fn view_of(t: &Tensor) -> Result<TensorView> {
    let dims = t.size();
    if dims.len() > MAX_DIMS {
        return Err(HostError::Shape {
            op: "view",
            message: format!(
                "{} dimensions; at most {MAX_DIMS} cross the ABI",
                dims.len()
            ),
        }
        .into());
    }
    let dtype = dtype_of(t.kind()).ok_or_else(|| HostError::Shape {
        op: "view",
        message: format!("element type {:?} does not cross the ABI", t.kind()),
    })?;
    let strides = t.stride();
    let mut view = TensorView {
        data: t.data_ptr(),
        byte_offset: 0,
        dtype,
        device: device_of(t.device()),
        ndim: dims.len() as u32,
        shape: [0; MAX_DIMS],
        strides: [0; MAX_DIMS],
    };
    view.shape[..dims.len()].copy_from_slice(&dims);
    view.strides[..dims.len()].copy_from_slice(&strides);
    Ok(view)
}

/// Registers a tensor and returns its ABI handle.
pub(crate) fn register(tensor: Tensor, owner: Owner) -> Result<api::Tensor> {
    let view = view_of(&tensor)?;
    let id = STORE.next.fetch_add(1, Ordering::Relaxed);
    STORE.map.lock().insert(id, Entry { tensor, owner });
    Ok(api::Tensor {
        id: TensorId(id),
        view,
    })
}

fn unknown(id: TensorId) -> Error {
    HostError::Invalid(format!(
        "tensor id {} is unknown (released, or lent for an earlier call only)",
        id.0
    ))
    .into()
}

/// The tensor behind an id (sharing storage).
pub(crate) fn get(id: TensorId) -> Result<Tensor> {
    STORE
        .map
        .lock()
        .get(&id.0)
        .map(|e| e.tensor.shallow_clone())
        .ok_or_else(|| unknown(id))
}

/// The tensor behind an id the plugin owns; writing to host tensors is refused.
pub(crate) fn get_writable(id: TensorId) -> Result<Tensor> {
    match STORE.map.lock().get(&id.0) {
        Some(e) if e.owner == Owner::Plugin => Ok(e.tensor.shallow_clone()),
        Some(_) => Err(HostError::Invalid(format!(
            "tensor id {} belongs to the host (a weight or an input) and cannot be written",
            id.0
        ))
        .into()),
        None => Err(unknown(id)),
    }
}

/// Whether the plugin owns `id` (may write it), as opposed to borrowing it from the host.
pub(crate) fn owned_by_plugin(id: TensorId) -> Result<bool> {
    match STORE.map.lock().get(&id.0) {
        Some(e) => Ok(e.owner == Owner::Plugin),
        None => Err(unknown(id)),
    }
}

/// Removes an id the plugin owns.
pub(crate) fn release(id: TensorId) -> Result<()> {
    let mut map = STORE.map.lock();
    match map.get(&id.0) {
        Some(e) if e.owner == Owner::Plugin => {
            map.remove(&id.0);
            Ok(())
        }
        Some(_) => Err(HostError::Invalid(format!(
            "tensor id {} belongs to the host and cannot be released by a plugin",
            id.0
        ))
        .into()),
        None => Err(unknown(id)),
    }
}

/// Takes a tensor a plugin handed over (in a `ScoreOut`, say) out of the store, with every
/// deferred square root computed (see `crate::deferred`).
pub(crate) fn take(id: TensorId) -> Result<Tensor> {
    crate::deferred::flush()?;
    take_deferred(id)
}

/// `take` that leaves deferred square roots pending: for a tensor the host only stores until
/// the batch of scorer calls ends (a fused score's column scale).
pub(crate) fn take_deferred(id: TensorId) -> Result<Tensor> {
    let mut map = STORE.map.lock();
    match map.get(&id.0) {
        Some(e) if e.owner == Owner::Plugin => Ok(map.remove(&id.0).expect("present").tensor),
        Some(_) => Err(HostError::Invalid(format!(
            "tensor id {} belongs to the host; a plugin can only hand over tensors it owns",
            id.0
        ))
        .into()),
        None => Err(unknown(id)),
    }
}

/// Number of tensors plugins hold right now (for leak checks in tests).
pub fn plugin_owned_count() -> usize {
    STORE
        .map
        .lock()
        .values()
        .filter(|e| e.owner == Owner::Plugin)
        .count()
}

/// Host tensors lent for one call; unregistered when dropped.
#[derive(Default)]
pub(crate) struct Lent {
    ids: Vec<u64>,
}

impl Lent {
    /// Lends `t` and returns its handle.
    pub fn lend(&mut self, t: &Tensor) -> Result<api::Tensor> {
        let h = register(t.shallow_clone(), Owner::Host)?;
        self.ids.push(h.id.0);
        Ok(h)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut map = STORE.map.lock();
        for id in &self.ids {
            map.remove(id);
        }
    }
}
