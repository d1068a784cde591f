// libtorch's current CUDA stream, through its public device-generic C++ API, compiled against
// the headers of the installed torch, so an API change is a build error here rather than a
// wrong stream at run time. (c10::cuda::getCurrentCUDAStream would need the CUDA toolkit's
// headers, which torch's pip wheels do not ship; this route needs c10's alone and is what
// PyTorch's own device-generic code calls.) Called from Rust: src/engine/stream.rs.
#include <c10/core/Device.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdint>

// The cudaStream_t libtorch would use now on CUDA device `device` (null for the legacy default
// stream). Returns 1 with the stream in `*out`, or 0 when libtorch cannot say (no CUDA support
// loaded, no such device, any error): C++ exceptions never cross into Rust.
extern "C" int birdbone_current_cuda_stream(int8_t device, void** out) {
    try {
        const c10::Device dev(c10::DeviceType::CUDA, device);
        const c10::Stream s = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(dev);
        if (s.device_type() != c10::DeviceType::CUDA || s.device_index() != device) return 0;
        *out = s.native_handle();
        return 1;
    } catch (...) {
        return 0;
    }
}
