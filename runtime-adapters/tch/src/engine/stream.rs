//! libtorch's current CUDA stream, for the CUDA engine's launches: asked through the C++ shim
//! (shim/current_stream.cpp) built against the installed torch's headers, and registered with
//! `birdbone-cuda`, which links no tensor library.

use std::ffi::c_void;

#[cfg(birdbone_stream_shim)]
extern "C" {
    fn birdbone_current_cuda_stream(device: i8, out: *mut *mut c_void) -> std::ffi::c_int;
}

/// The `cudaStream_t` libtorch would use now on CUDA device `device` (null for the legacy
/// default stream); `None` when libtorch cannot say (no CUDA support loaded, no such device).
pub fn current_cuda_stream(device: i8) -> Option<*mut c_void> {
    #[cfg(birdbone_stream_shim)]
    {
        let mut out = std::ptr::null_mut();
        // SAFETY: the shim writes one pointer through `out` and catches every C++ exception.
        let ok = unsafe { birdbone_current_cuda_stream(device, &mut out) };
        (ok == 1).then_some(out)
    }
    #[cfg(not(birdbone_stream_shim))]
    {
        let _ = device;
        None
    }
}

/// Whether this build can ask libtorch for its stream (the shim was built: a CUDA libtorch).
pub fn shim_built() -> bool {
    cfg!(birdbone_stream_shim)
}

/// Registers [`current_cuda_stream`] as where the CUDA engine launches (idempotent).
pub fn register() {
    birdbone_cuda::set_stream_source(current_cuda_stream);
}
