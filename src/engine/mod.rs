//! The storage engine seam: everything above it is the same code in production
//! (RocksDB) and in the simulator (in-memory).

mod memory;
#[cfg(not(madsim))]
mod rocks;

pub use memory::MemoryEngine;
#[cfg(not(madsim))]
pub use rocks::RocksEngine;

use std::io;

/// One change in a write batch: a value to put, or `None` to delete.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// An ordered key-value store with atomic, optionally durable, batches.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>>;

    /// Applies every change or none. With `sync`, the batch survives a crash of the
    /// machine once this returns; this is the call group commit amortises.
    fn write(&self, batch: &[Change], sync: bool) -> io::Result<()>;
}
