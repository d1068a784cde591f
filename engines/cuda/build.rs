//! Writes the CUDA side of `src/layout.rs` (the constants and modes the kernels share with the
//! host) into `$OUT_DIR/layout.cuh`.

#[allow(dead_code)]
mod layout {
    include!("src/layout.rs");
}

fn main() {
    println!("cargo:rerun-if-changed=src/layout.rs");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("layout.cuh"), layout::cuda_header()).expect("write layout.cuh");
}
