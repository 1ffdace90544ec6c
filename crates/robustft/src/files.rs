//! Opening the files a user points at: inputs are read only when they are regular files (a
//! FIFO, socket or device named in a manifest would otherwise block a reader forever, or
//! stream without end), and output paths are checked before any work so that a long
//! computation never ends in "cannot write".

use std::fs::File;
use std::io::{Error, ErrorKind};
use std::path::Path;

/// Opens `path` for reading if it is a regular file (symbolic links followed). The check is
/// made on the opened file, and the open itself cannot block: on Unix it is non-blocking.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let file = open_without_blocking(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    Err(Error::new(ErrorKind::InvalidInput, format!("not a regular file (a {})", describe(kind))))
}

/// The whole text of a regular file.
pub fn read_regular_to_string(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut open_regular(path)?, &mut text)?;
    Ok(text)
}

/// `text` without a leading UTF-8 byte-order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Checks that `path` can be written (created or appended to) without writing anything: its
/// directory exists, it is not a directory, and an existing file opens for appending. A
/// missing file is probed by creating it and removing it again.
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("the directory {} does not exist", parent.display()),
        ));
    }
    if path.is_dir() {
        return Err(Error::new(ErrorKind::InvalidInput, "it is a directory"));
    }
    if path.exists() {
        return std::fs::OpenOptions::new().append(true).open(path).map(drop);
    }
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    std::fs::remove_file(path)
}

#[cfg(unix)]
fn open_without_blocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)
}

#[cfg(not(unix))]
fn open_without_blocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

fn describe(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "FIFO";
        }
        if kind.is_socket() {
            return "socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "device";
        }
    }
    if kind.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("robustft-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = scratch("fifo");
        let fifo = dir.join("image.png");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        let error = open_regular(&fifo).unwrap_err();
        assert!(error.to_string().contains("not a regular file (a FIFO)"), "{error}");
        assert!(open_regular(&dir).unwrap_err().to_string().contains("directory"));
        std::fs::write(dir.join("ok.txt"), "\u{feff}cat\n").unwrap();
        assert_eq!(strip_bom(&read_regular_to_string(&dir.join("ok.txt")).unwrap()), "cat\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_targets_are_checked_without_writing() {
        let dir = scratch("writable");
        let target = dir.join("results.jsonl");
        check_writable(&target).unwrap();
        assert!(!target.exists(), "the probe left a file");
        let error = check_writable(&dir.join("missing/results.jsonl")).unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
        assert!(check_writable(&dir).is_err(), "a directory is not a write target");
        std::fs::write(&target, "kept").unwrap();
        check_writable(&target).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
