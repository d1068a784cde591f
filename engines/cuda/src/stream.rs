//! libtorch's current CUDA stream, without linking libtorch: `c10::cuda::getCurrentCUDAStream`
//! looked up in the already-loaded `libc10_cuda.so`.

use std::{ffi::c_void, sync::LazyLock};

use libloading::os::unix::{Library, Symbol, RTLD_NOW};

/// glibc's `RTLD_NOLOAD` (libloading does not re-export it): open only if already loaded.
const RTLD_NOLOAD: std::os::raw::c_int = 0x4;

/// `c10::cuda::CUDAStream` as returned by value: a `c10::Stream` (device type and index, then a
/// 64-bit stream id). Trivially copyable, 16 bytes, so the Itanium C++ ABI returns it in two
/// registers exactly as this `repr(C)` struct.
#[repr(C)]
#[derive(Clone, Copy)]
struct CudaStreamValue {
    device: u64,
    id: i64,
}

type GetCurrent = unsafe extern "C" fn(i8) -> CudaStreamValue;
type StreamOf = unsafe extern "C" fn(*const CudaStreamValue) -> *mut c_void;

struct Api {
    get_current: Symbol<GetCurrent>,
    stream_of: Symbol<StreamOf>,
    _lib: Library,
}

static API: LazyLock<Option<Api>> = LazyLock::new(|| {
    // SAFETY: RTLD_NOLOAD only returns a library the process already loaded (libtorch's own);
    // the symbols are looked up by their mangled names and typed as documented above.
    unsafe {
        let lib = Library::open(Some("libc10_cuda.so"), RTLD_NOW | RTLD_NOLOAD).ok()?;
        let get_current: Symbol<GetCurrent> =
            lib.get(b"_ZN3c104cuda20getCurrentCUDAStreamEa\0").ok()?;
        let stream_of: Symbol<StreamOf> = lib.get(b"_ZNK3c104cuda10CUDAStream6streamEv\0").ok()?;
        Some(Api {
            get_current,
            stream_of,
            _lib: lib,
        })
    }
});

/// The `cudaStream_t` libtorch would use now on device `index` (null for the legacy default
/// stream), or `None` when libtorch's CUDA library is not loaded in this process.
pub fn torch_current_stream(index: i8) -> Option<*mut c_void> {
    let api = API.as_ref()?;
    // SAFETY: see `API`; the value returned is a plain struct we pass back by pointer.
    unsafe {
        let v = (api.get_current)(index);
        // c10::DeviceType::CUDA is 1, and the index byte follows it: anything else means the
        // layout assumption above does not hold for this libtorch, so do not trust the value.
        let (kind, dev) = (
            (v.device & 0xff) as u8,
            ((v.device >> 8) & 0xff) as u8 as i8,
        );
        if kind != 1 || (index >= 0 && dev != index) {
            return None;
        }
        Some((api.stream_of)(&v))
    }
}
