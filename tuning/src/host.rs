//! The reading (and, for `--apply`, writing) layer: where host settings live on disk.
//!
//! [`Host`] holds the roots of `/proc` and `/sys` so that tests, and a dry run of
//! `--apply`, can point it at a temporary tree instead of the live kernel. Everything above
//! this module works on parsed values and never touches paths itself.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::parse::ParseError;

/// Largest host file we read. The biggest file we need is `/proc/interrupts`, a few
/// hundred KiB on machines with thousands of IRQs; a bound keeps a strange file (a pipe, a
/// fake) from making us allocate without limit.
pub const HOST_FILE_BYTES_MAX: u64 = 4 << 20;

/// Most directory entries we list (`/sys/class/net`, `/sys/devices/system/cpu`); real
/// machines have at most a few thousand CPUs or interfaces.
pub const DIR_ENTRIES_MAX: usize = 65_536;

/// Why a setting could not be read.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The file does not exist: the kernel lacks the feature, or this is not Linux.
    #[error("{path} not present")]
    Missing {
        /// The file looked for.
        path: PathBuf,
    },
    /// The file exists but could not be read (permissions, I/O error).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is larger than [`HOST_FILE_BYTES_MAX`].
    #[error("{path} is larger than {HOST_FILE_BYTES_MAX} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file was read but its text is not in the expected format.
    #[error("cannot parse {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong with the text.
        source: ParseError,
    },
}

/// Why a setting could not be written.
#[derive(Debug, Error)]
pub enum WriteError {
    /// The sysctl file does not exist; `--apply` never creates files.
    #[error("{path} not present")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The kernel (or the file system) refused the write.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said (EACCES without root, EINVAL for a value out of range).
        source: std::io::Error,
    },
}

/// Where the host's `/proc` and `/sys` are, plus the facts we cannot read from files.
#[derive(Debug, Clone)]
pub struct Host {
    /// Root of procfs, `/proc` on a live system.
    pub proc_root: PathBuf,
    /// Root of sysfs, `/sys` on a live system.
    pub sys_root: PathBuf,
    /// Page size in bytes; `tcp_mem` counts pages.
    pub page_size_bytes: u64,
    /// Which process's `/proc/<pid>/limits` and `status` to read: `self` by default, or
    /// the pid of a running `redrain serve`, whose limits are what actually matter.
    pub process: String,
}

/// Page size assumed when `sysconf` cannot tell (every x86-64 and most arm64 kernels).
const PAGE_SIZE_BYTES_FALLBACK: u64 = 4096;

impl Host {
    /// The live system: `/proc`, `/sys`, this process, the real page size.
    pub fn system() -> Host {
        // SAFETY: sysconf has no preconditions; it returns -1 on error, handled below.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page_size_bytes =
            u64::try_from(page_size).ok().filter(|&bytes| bytes > 0).unwrap_or(PAGE_SIZE_BYTES_FALLBACK);
        Host {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            page_size_bytes,
            process: "self".to_string(),
        }
    }

    /// A host rooted at `root/proc` and `root/sys` with 4 KiB pages, for tests.
    pub fn under(root: &Path) -> Host {
        Host {
            proc_root: root.join("proc"),
            sys_root: root.join("sys"),
            page_size_bytes: PAGE_SIZE_BYTES_FALLBACK,
            process: "self".to_string(),
        }
    }

    /// Path of a sysctl: `net.ipv4.tcp_mem` -> `<proc_root>/sys/net/ipv4/tcp_mem`.
    pub fn sysctl_path(&self, key: &str) -> PathBuf {
        let mut path = self.proc_root.join("sys");
        for part in key.split('.') {
            path.push(part);
        }
        path
    }

    /// Path under the proc root, e.g. `proc_path("interrupts")`.
    pub fn proc_path(&self, relative: &str) -> PathBuf {
        self.proc_root.join(relative)
    }

    /// Path under the proc root of the inspected process, e.g. `limits`.
    pub fn process_path(&self, relative: &str) -> PathBuf {
        self.proc_root.join(&self.process).join(relative)
    }

    /// Path under the sys root, e.g. `sys_path("kernel/mm/transparent_hugepage/enabled")`.
    pub fn sys_path(&self, relative: &str) -> PathBuf {
        self.sys_root.join(relative)
    }

    /// Reads a whole host file, bounded by [`HOST_FILE_BYTES_MAX`].
    pub fn read_text(&self, path: &Path) -> Result<String, ReadError> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|source| io_read_error(path, source))?;
        let mut text = String::new();
        // procfs files report size 0, so the bound is enforced on what is read, not stat.
        let read = file
            .take(HOST_FILE_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(|source| io_read_error(path, source))?;
        if read as u64 > HOST_FILE_BYTES_MAX {
            return Err(ReadError::TooLarge { path: path.to_path_buf() });
        }
        Ok(text)
    }

    /// Reads a file and parses it with `parse`, attaching the path to any error.
    pub fn read_parsed<T>(
        &self,
        path: &Path,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, ReadError> {
        let text = self.read_text(path)?;
        parse(&text).map_err(|source| ReadError::Parse { path: path.to_path_buf(), source })
    }

    /// Reads a sysctl's raw text.
    pub fn read_sysctl(&self, key: &str) -> Result<String, ReadError> {
        self.read_text(&self.sysctl_path(key))
    }

    /// Writes a sysctl through `/proc/sys`. The file must already exist: a missing sysctl
    /// means the kernel does not have it, and creating a plain file would hide that.
    pub fn write_sysctl(&self, key: &str, value: &str) -> Result<(), WriteError> {
        use std::io::Write;
        let path = self.sysctl_path(key);
        let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                WriteError::Missing { path: path.clone() }
            } else {
                WriteError::Io { path: path.clone(), source }
            }
        })?;
        // procfs parses the value from a single write call, so write it in one go with
        // the newline that `sysctl -w` also sends.
        file.write_all(format!("{value}\n").as_bytes()).map_err(|source| WriteError::Io { path, source })
    }

    /// Lists the entries of a directory under the sys root, sorted; empty if absent.
    pub fn list_dir(&self, path: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(path) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .take(DIR_ENTRIES_MAX)
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }
}

fn io_read_error(path: &Path, source: std::io::Error) -> ReadError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ReadError::Missing { path: path.to_path_buf() }
    } else {
        ReadError::Io { path: path.to_path_buf(), source }
    }
}
