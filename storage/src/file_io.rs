//! The file layer under the log: one small trait with a real glommio backend
//! and a fault-injecting wrapper for tests.
//!
//! Everything the log does to a segment after start-up (write, fdatasync,
//! truncate, read for shipping) goes through [`SegmentFile`], so tests can make
//! any of those calls fail (ENOSPC, EIO, short writes) and check that the log
//! stays consistent. Start-up recovery reads segments with plain blocking
//! reads: nothing else runs on the core yet.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;

use glommio::io::{BufferedFile, Directory, OpenOptions};

/// A boxed, core-local I/O future.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + 'a>>;

/// One open segment file.
pub trait SegmentFile {
    /// Writes all of `buf` at `pos`; returns the bytes written (a short count
    /// means the device is full).
    fn write_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, usize>;
    /// Reads up to `len` bytes at `pos`.
    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Vec<u8>>;
    /// Makes written data durable.
    fn fdatasync(&self) -> IoFuture<'_, ()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&self, len: u64) -> IoFuture<'_, ()>;
}

/// Creates and opens segment files and syncs directories.
pub trait FileSystem {
    /// Creates a new file (must not exist), open for reading and writing.
    fn create(&self, path: &Path) -> IoFuture<'static, Rc<dyn SegmentFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> IoFuture<'static, Rc<dyn SegmentFile>>;
    /// fsyncs a directory so that file creations and removals in it are durable.
    fn sync_dir(&self, dir: &Path) -> IoFuture<'static, ()>;
}

/// The real backend: glommio buffered files on io_uring (see docs/storage.md
/// for why buffered writes + fdatasync beat O_DIRECT for this log).
#[derive(Debug, Default, Clone, Copy)]
pub struct GlommioFileSystem;

struct GlommioSegment(BufferedFile);

impl SegmentFile for GlommioSegment {
    fn write_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, usize> {
        // A short count is returned as is: buffered writes come back short
        // only when the device is full, and the log fails the batch then.
        Box::pin(async move { Ok(self.0.write_at(buf, pos).await?) })
    }

    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Vec<u8>> {
        Box::pin(async move {
            let result = self.0.read_at(pos, len).await?;
            Ok(result.to_vec())
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move { Ok(self.0.fdatasync().await?) })
    }

    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move { Ok(self.0.truncate(len).await?) })
    }
}

impl FileSystem for GlommioFileSystem {
    fn create(&self, path: &Path) -> IoFuture<'static, Rc<dyn SegmentFile>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let file = OpenOptions::new().read(true).write(true).create_new(true).buffered_open(&path).await?;
            Ok(Rc::new(GlommioSegment(file)) as Rc<dyn SegmentFile>)
        })
    }

    fn open(&self, path: &Path) -> IoFuture<'static, Rc<dyn SegmentFile>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let file = OpenOptions::new().read(true).write(true).buffered_open(&path).await?;
            Ok(Rc::new(GlommioSegment(file)) as Rc<dyn SegmentFile>)
        })
    }

    fn sync_dir(&self, dir: &Path) -> IoFuture<'static, ()> {
        let dir = dir.to_path_buf();
        Box::pin(async move {
            let directory = Directory::open(&dir).await?;
            directory.sync().await?;
            directory.close().await?;
            Ok(())
        })
    }
}

/// Switches that make a [`FaultyFileSystem`] fail; shared with the test that
/// flips them.
#[derive(Debug, Default)]
pub struct FaultSwitches {
    /// When set, every write fails with this errno (e.g. `libc::ENOSPC`).
    pub write_errno: Cell<Option<i32>>,
    /// When set, writes stop after this many bytes (a short write, as on a
    /// full device) - applies once, then clears.
    pub short_write_bytes: Cell<Option<usize>>,
    /// When set, every fdatasync fails with this errno.
    pub sync_errno: Cell<Option<i32>>,
    /// When set, file creation fails with this errno.
    pub create_errno: Cell<Option<i32>>,
    /// Writes that failed because of a switch.
    pub injected_failures: Cell<u64>,
}

impl FaultSwitches {
    /// Turns every fault off.
    pub fn heal(&self) {
        self.write_errno.set(None);
        self.short_write_bytes.set(None);
        self.sync_errno.set(None);
        self.create_errno.set(None);
    }
}

/// A [`FileSystem`] that forwards to a real one and fails on command.
#[derive(Clone)]
pub struct FaultyFileSystem {
    inner: Rc<dyn FileSystem>,
    switches: Rc<FaultSwitches>,
}

impl FaultyFileSystem {
    /// Wraps `inner`; faults are controlled through `switches`.
    pub fn new(inner: Rc<dyn FileSystem>, switches: Rc<FaultSwitches>) -> Self {
        Self { inner, switches }
    }
}

struct FaultySegment {
    inner: Rc<dyn SegmentFile>,
    switches: Rc<FaultSwitches>,
}

impl SegmentFile for FaultySegment {
    fn write_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, usize> {
        Box::pin(async move {
            if let Some(errno) = self.switches.write_errno.get() {
                self.switches.injected_failures.set(self.switches.injected_failures.get() + 1);
                return Err(io::Error::from_raw_os_error(errno));
            }
            if let Some(limit) = self.switches.short_write_bytes.take() {
                self.switches.injected_failures.set(self.switches.injected_failures.get() + 1);
                let cut = limit.min(buf.len());
                let partial = buf[..cut].to_vec();
                return self.inner.write_at(partial, pos).await;
            }
            self.inner.write_at(buf, pos).await
        })
    }

    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Vec<u8>> {
        self.inner.read_at(pos, len)
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            if let Some(errno) = self.switches.sync_errno.get() {
                self.switches.injected_failures.set(self.switches.injected_failures.get() + 1);
                return Err(io::Error::from_raw_os_error(errno));
            }
            self.inner.fdatasync().await
        })
    }

    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        self.inner.truncate(len)
    }
}

impl FileSystem for FaultyFileSystem {
    fn create(&self, path: &Path) -> IoFuture<'static, Rc<dyn SegmentFile>> {
        let inner = self.inner.clone();
        let switches = self.switches.clone();
        let path = path.to_path_buf();
        Box::pin(async move {
            if let Some(errno) = switches.create_errno.get() {
                return Err(io::Error::from_raw_os_error(errno));
            }
            let file = inner.create(&path).await?;
            Ok(Rc::new(FaultySegment { inner: file, switches }) as Rc<dyn SegmentFile>)
        })
    }

    fn open(&self, path: &Path) -> IoFuture<'static, Rc<dyn SegmentFile>> {
        let inner = self.inner.clone();
        let switches = self.switches.clone();
        let path = path.to_path_buf();
        Box::pin(async move {
            let file = inner.open(&path).await?;
            Ok(Rc::new(FaultySegment { inner: file, switches }) as Rc<dyn SegmentFile>)
        })
    }

    fn sync_dir(&self, dir: &Path) -> IoFuture<'static, ()> {
        self.inner.sync_dir(dir)
    }
}
