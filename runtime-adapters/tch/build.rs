//! Links libtorch as every binary on it must (build-support/link-torch.rs), and builds the C++
//! shim that asks libtorch for its current CUDA stream (shim/current_stream.cpp) against the
//! installed torch's headers. Without a CUDA libtorch there is no shim (cfg
//! `birdbone_stream_shim` unset), and nothing runs on CUDA anyway.

use std::path::PathBuf;

mod link {
    include!("../../build-support/link-torch.rs");
    pub fn run() {
        link_torch();
    }
}

fn main() {
    link::run();
    build_shim();
}

fn build_shim() {
    println!("cargo::rustc-check-cfg=cfg(birdbone_stream_shim)");
    println!("cargo:rerun-if-changed=shim/current_stream.cpp");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = PathBuf::from(lib);
    if !lib.join("libc10_cuda.so").exists() {
        return; // a CPU-only libtorch: no CUDA stream to ask for
    }
    let include = lib
        .parent()
        .expect("libtorch's lib folder has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("shim/current_stream.cpp")
        .include(&include)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("birdbone_stream_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-cfg=birdbone_stream_shim");
}
