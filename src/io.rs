//! File output that never leaves a half-written file behind.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder, flushed to disk and
/// renamed into place, so a crash leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
