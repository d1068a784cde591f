//! Where the kernels launch: the stream the tensor library uses now, so the kernels are ordered
//! with its work. This crate links no tensor library; the adapter registers how to ask
//! ([`set_stream_source`]: `birdbone-tch` asks libtorch through a C++ shim). Without a source,
//! the device's default stream.

use std::{ffi::c_void, sync::OnceLock};

/// Asks for the `cudaStream_t` in use now on a device (null: the legacy default stream), or
/// `None` when it cannot say.
pub type StreamSource = fn(i8) -> Option<*mut c_void>;

static SOURCE: OnceLock<StreamSource> = OnceLock::new();

/// Sets where the current stream comes from (the first call wins).
pub fn set_stream_source(f: StreamSource) {
    let _ = SOURCE.set(f);
}

/// The stream the tensor library uses now on device `index`, if a source is registered and
/// knows.
pub fn current_stream(index: i8) -> Option<*mut c_void> {
    SOURCE.get().and_then(|f| f(index))
}
