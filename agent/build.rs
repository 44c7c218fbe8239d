//! Compiles the sandbox process (`pause/main.rs`) on its own, statically linked, into OUT_DIR;
//! the agent embeds it and packs it as the sandbox image (see `src/image.rs`). A separate rustc
//! call because static linking is a per-program choice that Cargo cannot make for one binary.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET is set by cargo");
    let status = Command::new(rustc)
        .args(["--edition", "2021", "--crate-name", "keelson_pause", "--crate-type", "bin"])
        .args(["-C", "opt-level=s", "-C", "panic=abort", "-C", "strip=symbols", "-C", "target-feature=+crt-static"])
        .args(["--target", &target])
        .arg("-o")
        .arg(out.join("keelson-pause"))
        .arg("pause/main.rs")
        .status()
        .expect("cannot run rustc for the sandbox process");
    assert!(status.success(), "compiling pause/main.rs failed");
    println!("cargo:rerun-if-changed=pause/main.rs");
}
