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

use glommio::io::{BufferedFile, Directory, DmaFile, OpenOptions};

/// A boxed, core-local I/O future.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + 'a>>;

/// One open segment file.
pub trait SegmentFile {
    /// Writes all of `buf` at `pos`; returns the bytes written (a short count
    /// means the device is full).
    fn write_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, usize>;
    /// Writes `bufs` back to back from `pos` (one group commit of several
    /// batches); returns the bytes written, stopping at the first short
    /// count. The default writes the pieces one after the other; the
    /// direct-I/O backend gathers them into one aligned write.
    fn write_all_at(&self, bufs: Vec<Vec<u8>>, pos: u64) -> IoFuture<'_, usize> {
        Box::pin(async move {
            let mut written = 0usize;
            for buf in bufs {
                let len = buf.len();
                let n = self.write_at(buf, pos + written as u64).await?;
                written += n;
                if n < len {
                    break;
                }
            }
            Ok(written)
        })
    }
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
    /// Every write must start at a multiple of this and be a multiple of it
    /// long (1: any offset and length). The log pads its batches to it.
    fn write_alignment(&self) -> u64 {
        1
    }
}

/// Block size the direct-I/O backend aligns every write to (a multiple of
/// the logical block size of every common device).
pub const DIRECT_IO_ALIGNMENT: u64 = 4096;

/// Buffered backend: glommio buffered files on io_uring, written through
/// the page cache and made durable by fdatasync. Works on every file system
/// (tmpfs included); see docs/storage.md for how it compares with
/// [`GlommioDirectFileSystem`].
#[derive(Debug, Default, Clone, Copy)]
pub struct GlommioFileSystem;

/// The `SegmentFile` methods that are the same call on glommio's buffered
/// and DMA files (the two types share no trait).
macro_rules! glommio_file_ops {
    () => {
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
    };
}

struct GlommioSegment(BufferedFile);

impl SegmentFile for GlommioSegment {
    fn write_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, usize> {
        // A short count is returned as is: buffered writes come back short
        // only when the device is full, and the log fails the batch then.
        Box::pin(async move { Ok(self.0.write_at(buf, pos).await?) })
    }

    glommio_file_ops!();
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

/// Direct-I/O backend: glommio DMA files (O_DIRECT) on io_uring. Writes skip
/// the page cache (no copy into it, no writeback), so fdatasync only has to
/// flush the device. Every write is [`DIRECT_IO_ALIGNMENT`]-aligned: the log
/// pads each group commit to a block boundary and never rewrites a block it
/// has written, so a torn write can only damage the commit being written.
/// Not every file system supports O_DIRECT (tmpfs does not): see
/// [`direct_io_supported`].
#[derive(Debug, Default, Clone, Copy)]
pub struct GlommioDirectFileSystem;

struct DirectSegment(DmaFile);

impl SegmentFile for DirectSegment {
    fn write_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, usize> {
        Box::pin(async move {
            let align = DIRECT_IO_ALIGNMENT;
            if !pos.is_multiple_of(align) || !(buf.len() as u64).is_multiple_of(align) || buf.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("direct write of {} bytes at {pos} is not {align}-aligned", buf.len()),
                ));
            }
            let mut dma = self.0.alloc_dma_buffer(buf.len());
            dma.as_bytes_mut().copy_from_slice(&buf);
            drop(buf);
            Ok(self.0.write_at(dma, pos).await?)
        })
    }

    fn write_all_at(&self, bufs: Vec<Vec<u8>>, pos: u64) -> IoFuture<'_, usize> {
        Box::pin(async move {
            let len: usize = bufs.iter().map(Vec::len).sum();
            let align = DIRECT_IO_ALIGNMENT;
            if !pos.is_multiple_of(align) || !(len as u64).is_multiple_of(align) || len == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("direct write of {len} bytes at {pos} is not {align}-aligned"),
                ));
            }
            // One copy of each piece into one DMA buffer: the pieces are
            // whole batches, aligned only together.
            let mut dma = self.0.alloc_dma_buffer(len);
            let mut at = 0;
            for buf in bufs {
                dma.as_bytes_mut()[at..at + buf.len()].copy_from_slice(&buf);
                at += buf.len();
            }
            Ok(self.0.write_at(dma, pos).await?)
        })
    }

    glommio_file_ops!();
}

impl FileSystem for GlommioDirectFileSystem {
    fn create(&self, path: &Path) -> IoFuture<'static, Rc<dyn SegmentFile>> {
        Box::pin(open_direct(path.to_path_buf(), true))
    }

    fn open(&self, path: &Path) -> IoFuture<'static, Rc<dyn SegmentFile>> {
        Box::pin(open_direct(path.to_path_buf(), false))
    }

    fn sync_dir(&self, dir: &Path) -> IoFuture<'static, ()> {
        GlommioFileSystem.sync_dir(dir)
    }

    fn write_alignment(&self) -> u64 {
        DIRECT_IO_ALIGNMENT
    }
}

async fn open_direct(path: std::path::PathBuf, create: bool) -> io::Result<Rc<dyn SegmentFile>> {
    prime_iopoll_probe(&path).await?;
    let file = OpenOptions::new().read(true).write(true).create_new(create).dma_open(&path).await?;
    Ok(Rc::new(DirectSegment(file)) as Rc<dyn SegmentFile>)
}

thread_local! {
    /// Devices whose iopoll support glommio has probed on this thread.
    static PROBED_DEVICES: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// glommio decides once per thread and device whether direct reads go to
/// its polled (IOPOLL) ring, by reading the first block of the first DMA
/// file opened there. On an empty file that read returns at once without
/// touching the device, so glommio wrongly concludes that polling works and
/// every later read fails with EOPNOTSUPP (seen on virtio disks). Opening a
/// file that holds a real block first makes the probe honest.
async fn prime_iopoll_probe(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let device = std::fs::metadata(dir)?.dev();
    if PROBED_DEVICES.with(|probed| probed.borrow().contains(&device)) {
        return Ok(());
    }
    let probe = dir.join(format!(".iopoll-probe-{}", std::process::id()));
    std::fs::write(&probe, vec![0u8; DIRECT_IO_ALIGNMENT as usize])?;
    let opened = OpenOptions::new().read(true).dma_open(&probe).await;
    let _ = std::fs::remove_file(&probe);
    opened?.close().await?;
    PROBED_DEVICES.with(|probed| probed.borrow_mut().push(device));
    Ok(())
}

/// True when files in `dir` (which must exist) take direct writes and reads:
/// one aligned block is written, synced and read back through a scratch
/// file, which is then removed. (On tmpfs glommio opens DMA files without
/// O_DIRECT; the log still works there, aligned.)
pub async fn direct_io_supported(dir: &Path) -> bool {
    let path = dir.join(".direct-io-probe");
    let _ = std::fs::remove_file(&path);
    let probe = async {
        prime_iopoll_probe(&path).await?;
        let file = OpenOptions::new().read(true).write(true).create_new(true).dma_open(&path).await?;
        let mut buf = file.alloc_dma_buffer(DIRECT_IO_ALIGNMENT as usize);
        buf.as_bytes_mut().fill(0x5a);
        let written = file.write_at(buf, 0).await?;
        file.fdatasync().await?;
        let read = file.read_at(0, DIRECT_IO_ALIGNMENT as usize).await?;
        let ok = written == DIRECT_IO_ALIGNMENT as usize && read.iter().all(|b| *b == 0x5a);
        file.close().await?;
        io::Result::Ok(ok)
    };
    let supported = probe.await.unwrap_or_else(|err| {
        log::info!("{}: no direct I/O: {err}", dir.display());
        false
    });
    let _ = std::fs::remove_file(&path);
    supported
}

/// The backend for throughput-bound logs (replica streams, bulk imports):
/// direct I/O where the file system accepts it - it committed ~24% more at
/// saturation here - buffered otherwise. Latency-bound logs (a core's opens)
/// should use [`GlommioFileSystem`]: its p99 at low rates was lower in the
/// same runs (see docs/storage.md).
pub async fn throughput_file_system(dir: &Path) -> Rc<dyn FileSystem> {
    if direct_io_supported(dir).await {
        Rc::new(GlommioDirectFileSystem)
    } else {
        log::warn!("{}: O_DIRECT not supported here; the log uses buffered writes + fdatasync", dir.display());
        Rc::new(GlommioFileSystem)
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
    /// When set to `Some(n)`, n more fdatasyncs succeed and the next one
    /// fails with EIO (once; then clears).
    pub syncs_before_failure: Cell<Option<u32>>,
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
        self.syncs_before_failure.set(None);
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
    align: u64,
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
                // A full device cuts a direct write at a block boundary.
                let align = self.align as usize;
                let cut = limit.min(buf.len()) / align * align;
                if cut == 0 {
                    return Ok(0);
                }
                let partial = buf[..cut].to_vec();
                return self.inner.write_at(partial, pos).await;
            }
            self.inner.write_at(buf, pos).await
        })
    }

    fn write_all_at(&self, bufs: Vec<Vec<u8>>, pos: u64) -> IoFuture<'_, usize> {
        // Faults apply to the commit as one write (a direct backend needs the
        // pieces together to be aligned).
        self.write_at(bufs.concat(), pos)
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
            match self.switches.syncs_before_failure.get() {
                Some(0) => {
                    self.switches.syncs_before_failure.set(None);
                    self.switches.injected_failures.set(self.switches.injected_failures.get() + 1);
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                Some(n) => self.switches.syncs_before_failure.set(Some(n - 1)),
                None => {}
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
            let align = inner.write_alignment();
            let file = inner.create(&path).await?;
            Ok(Rc::new(FaultySegment { inner: file, switches, align }) as Rc<dyn SegmentFile>)
        })
    }

    fn open(&self, path: &Path) -> IoFuture<'static, Rc<dyn SegmentFile>> {
        let inner = self.inner.clone();
        let switches = self.switches.clone();
        let path = path.to_path_buf();
        Box::pin(async move {
            let align = inner.write_alignment();
            let file = inner.open(&path).await?;
            Ok(Rc::new(FaultySegment { inner: file, switches, align }) as Rc<dyn SegmentFile>)
        })
    }

    fn sync_dir(&self, dir: &Path) -> IoFuture<'static, ()> {
        self.inner.sync_dir(dir)
    }

    fn write_alignment(&self) -> u64 {
        self.inner.write_alignment()
    }
}
