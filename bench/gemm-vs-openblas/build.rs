//! Links the system OpenBLAS (Debian's libopenblas-dev) for `cblas_sgemm`.

fn main() {
    println!("cargo:rustc-link-lib=openblas");
}
