//! Keelson's sandbox ("pause") process: the first process of every pod sandbox. It holds the
//! pod's namespaces open, reaps the orphans the pod's containers leave (it is their init), and
//! exits at SIGTERM or SIGINT. `agent/build.rs` compiles it alone, statically linked, and the
//! agent packs it as the sandbox image.
//!
//! Signals are blocked and taken with `sigwaitinfo` rather than caught by handlers: as a PID
//! namespace's init the kernel would drop signals that have no handler, but never blocked ones.

use std::os::raw::c_int;
use std::ptr::null_mut;

/// glibc's `sigset_t`: 1,024 bits.
#[repr(C)]
struct SigSet([u64; 16]);

extern "C" {
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn sigaddset(set: *mut SigSet, signal: c_int) -> c_int;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigwaitinfo(set: *const SigSet, info: *mut u8) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
}

const SIG_BLOCK: c_int = 0;
const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;

fn main() {
    let mut set = SigSet([0; 16]);
    // SAFETY: plain libc calls on a set this function owns.
    unsafe {
        sigemptyset(&mut set);
        for s in [SIGINT, SIGTERM, SIGCHLD] {
            sigaddset(&mut set, s);
        }
        if sigprocmask(SIG_BLOCK, &set, null_mut()) != 0 {
            eprintln!("pause: cannot block signals");
            std::process::exit(1);
        }
        loop {
            match sigwaitinfo(&set, null_mut()) {
                SIGCHLD => while waitpid(-1, null_mut(), WNOHANG) > 0 {},
                SIGINT | SIGTERM => std::process::exit(0),
                // Interrupted: wait again.
                _ => {}
            }
        }
    }
}
