//! bpf-linker is an undeclared dependency of this crate (cargo cannot express it); rebuild when it
//! changes and fail with a message that names the fix when it is missing.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            println!(
                "cargo:warning=bpf-linker is not on PATH; run `cargo xtask setup` (it installs it into .tools/bin)"
            );
        }
    }
}
