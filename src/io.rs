//! File output that never leaves a half-written file behind, and never replaces what is not a
//! plain file: a symbolic link is written through (its target is replaced), and a pipe, a
//! terminal or a device (`/dev/stdout`, `/dev/null`, a FIFO) is written to directly.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path`. A regular file (new or existing, directly or behind symbolic links)
/// is written through a temporary file beside it, flushed to disk and renamed into place, so a
/// crash leaves either the old file or the new one; the links stay links. Anything else that
/// exists (a pipe, a terminal, a device) and any path under `/dev` or `/proc` is opened and
/// written in place: such a node is never replaced. A folder is an error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let special = path.starts_with("/dev") || path.starts_with("/proc");
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a folder, not a file"));
        }
        // Opening through /dev or /proc reaches the file the link names (e.g. the shell's
        // redirection of stdout); appending keeps what was written to it before.
        Ok(m) if m.is_file() && special => return write_in_place(path, bytes, true),
        Ok(m) if !m.is_file() => return write_in_place(path, bytes, false),
        _ if special => return write_in_place(path, bytes, false),
        _ => {}
    }
    replace_file(&resolve_links(path)?, bytes)
}

/// Checks before any work that `path` can be written later: creates its missing folders (behind
/// links too) and makes and removes a temporary file beside it. A folder is an error; a pipe or
/// a device is accepted as it is.
pub fn prepare_output(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a folder, not a file"))
        }
        Ok(m) if !m.is_file() => return Ok(()),
        _ if path.starts_with("/dev") || path.starts_with("/proc") => return Ok(()),
        _ => {}
    }
    let target = resolve_links(path)?;
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))?;
    // The name of a temporary of this target, so that a probe left by a crash is tidied later.
    let probe = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

fn write_in_place(path: &Path, bytes: &[u8], append: bool) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).append(append).open(path)?;
    f.write_all(bytes)?;
    f.flush()
}

/// Follows symbolic links (also dangling ones, whose target is then created) to the path of
/// the file itself, so that the temporary file is made beside the target and the link survives.
fn resolve_links(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    // Linux's own limit on links followed in one lookup.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))?;
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    remove_stale_temporaries(dir, &prefix);
    let tmp = dir.join(format!("{prefix}{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes the temporary files `<prefix><pid>` in `dir` that a killed writer of the same target
/// left behind: only names of exactly that pattern, and only when the process `pid` is gone
/// (where `/proc` tells; elsewhere nothing is removed). Errors are ignored: this is tidying.
fn remove_stale_temporaries(dir: &Path, prefix: &str) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || pid.parse::<u32>().is_err() {
            continue;
        }
        if !proc.join(pid).exists() && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::write_atomic;
    use std::path::Path;

    #[cfg(unix)]
    #[test]
    fn removes_only_its_own_stale_temporaries() {
        let dir = std::env::temp_dir().join(format!("vlsa-io-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A dead writer of out.json (no process has pid 4294967295), a live one (this process's
        // parent), and names that only look alike.
        let live = std::os::unix::process::parent_id();
        let keep = [
            format!(".out.json.tmp-{live}"),
            ".other.json.tmp-4294967295".into(),
            "out.json.tmp-4294967295".into(),
            ".out.json.tmp-12ab".into(),
            ".out.json.tmp-".into(),
            ".out.jsonx.tmp-4294967295".into(),
        ];
        for name in &keep {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        std::fs::write(dir.join(".out.json.tmp-4294967295"), b"half").unwrap();
        write_atomic(&dir.join("out.json"), b"new").unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut want: Vec<String> = keep.iter().cloned().chain(["out.json".to_string()]).collect();
        want.sort();
        assert_eq!(left, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_and_replaces_without_leftovers() {
        let dir = std::env::temp_dir().join(format!("vlsa-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
        assert!(write_atomic(&dir.join("missing/out.json"), b"x").is_err());
        assert!(write_atomic(&dir, b"x").is_err(), "a folder is not replaced");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn writes_through_links_and_into_pipes() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("vlsa-io-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        // A relative link to an existing file, a chain of two links, and a dangling link.
        std::fs::write(dir.join("real/a.json"), b"old").unwrap();
        symlink("real/a.json", dir.join("link.json")).unwrap();
        symlink(dir.join("link.json"), dir.join("link2.json")).unwrap();
        symlink("real/new.json", dir.join("dangling.json")).unwrap();
        write_atomic(&dir.join("link2.json"), b"new").unwrap();
        write_atomic(&dir.join("dangling.json"), b"made").unwrap();
        for link in ["link.json", "link2.json", "dangling.json"] {
            assert!(std::fs::symlink_metadata(dir.join(link)).unwrap().file_type().is_symlink(), "{link} stays a link");
        }
        assert_eq!(std::fs::read(dir.join("real/a.json")).unwrap(), b"new");
        assert_eq!(std::fs::read(dir.join("real/new.json")).unwrap(), b"made");
        assert_eq!(std::fs::read_dir(dir.join("real")).unwrap().count(), 2, "no temporary file is left");
        // /dev/null takes the bytes and stays a device.
        write_atomic(Path::new("/dev/null"), b"gone").unwrap();
        assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
        // A FIFO is written to, not replaced.
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_atomic(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
