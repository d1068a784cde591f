// Build script shared by every package that links a binary against libtorch.
//
// The linker drops libtorch_cuda as unused (nothing references it by symbol), and then
// `tch::Cuda::is_available()` is false even on a GPU machine: link it explicitly whenever the
// libtorch in use has it. Also records libtorch's folder as an rpath so binaries run here
// without LD_LIBRARY_PATH (on another machine, set LD_LIBRARY_PATH as the README says).

// (Plain comments, not `//!`: runtime-adapters/tch's build script `include!`s this file.)
#[allow(dead_code)]
fn main() {
    link_torch();
}

fn link_torch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
