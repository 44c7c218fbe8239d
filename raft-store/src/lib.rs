//! Keelson's replicated key-value store: an MVCC key space with etcd v3 semantics, replicated
//! by openraft, persisted in RocksDB, served over etcd's v3 gRPC API.

pub mod authority;
pub mod coalesce;
pub mod lease;
pub mod mvcc;
pub mod network;
pub mod node;
pub mod server;
pub mod snapshot_file;
pub mod storage;
pub mod types;
pub mod wal;
pub mod watch;

pub use node::{ClusterState, StoreConfig, StoreNode};

/// Heap use as the crate's own tests see it: a counting allocator over the system one, so that
/// a test can bound what an operation holds at its peak (nextest runs each test in a process of
/// its own).
#[cfg(test)]
pub(crate) mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    struct Counting;

    static CURRENT: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    fn grew(bytes: usize) {
        let now = CURRENT.fetch_add(bytes, Relaxed) + bytes;
        PEAK.fetch_max(now, Relaxed);
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            CURRENT.fetch_sub(layout.size(), Relaxed);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                CURRENT.fetch_sub(layout.size(), Relaxed);
                grew(new_size);
            }
            p
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Starts a new peak from what is held now; returns that.
    pub fn reset_peak() -> usize {
        let now = CURRENT.load(Relaxed);
        PEAK.store(now, Relaxed);
        now
    }

    /// The most held at once since the last `reset_peak`.
    pub fn peak() -> usize {
        PEAK.load(Relaxed)
    }
}
