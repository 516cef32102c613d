//! The development signing secret of this machine's user: a file in the data directory
//! (CIM_DATA_DIR, else `$XDG_DATA_HOME/cim` or `~/.local/share/cim`), made once by
//! `cim local-secret` (which `scripts/up.sh` runs), readable by its owner only.
//!
//! Only the CLI reads it: `cim token` signs with it when CIM_JWT_HS256_SECRET is not set and no
//! public key is configured. The services never fall back to it; `scripts/up.sh` passes it to
//! them in CIM_JWT_HS256_SECRET, so a deployment without a configured key still refuses to start.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Random bytes in a new secret (written as hex, so the file holds twice as many characters).
const SECRET_BYTES: usize = 32;

/// The shortest secret the gateway accepts (CIM_JWT_HS256_SECRET: at least 32 bytes).
const MIN_LEN: usize = 32;

/// Makes the secret file unless it exists: 32 random bytes as hex, mode 0600, in a directory
/// made with mode 0700. Returns whether it was made now. Safe against a concurrent run: the
/// file appears complete or not at all.
pub fn ensure(path: &Path) -> Result<bool, String> {
    if path.exists() {
        read(path)?;
        return Ok(false);
    }
    let dir = path.parent().ok_or_else(|| format!("{}: no parent directory", path.display()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    let mut random = [0u8; SECRET_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("cannot read random bytes from /dev/urandom: {e}"))?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    // Written aside, then linked into place: a reader never sees a half-written file, and a
    // concurrent run's file, if it won, is kept.
    let tmp =
        dir.join(format!(".{}.{}.tmp", path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(hex.as_bytes()).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", tmp.display()));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path).map(|_| false),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

/// Reads the secret; refuses a file other users can read or write, like ssh does a key.
pub fn read(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is open to other users (mode {mode:03o}): `chmod 600 {}`, or delete it and run `cim local-secret` for a new one",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.len() < MIN_LEN {
        return Err(format!(
            "{} holds {} bytes, fewer than the {MIN_LEN} a signing secret needs: delete it and run `cim local-secret`",
            path.display(),
            secret.len()
        ));
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        std::env::temp_dir().join(format!("cim-local-{tag}-{}-{nanos}", std::process::id()))
    }

    #[test]
    fn a_secret_is_made_once_private_and_random() {
        let dir = temp_dir("made");
        let path = dir.join("nested").join("jwt-hs256-secret");
        assert_eq!(ensure(&path), Ok(true));
        let secret = read(&path).unwrap();
        assert_eq!(secret.len(), 2 * SECRET_BYTES);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        // Again: kept, not replaced.
        assert_eq!(ensure(&path), Ok(false));
        assert_eq!(read(&path).unwrap(), secret);
        // Another file: another secret.
        let other = dir.join("other");
        ensure(&other).unwrap();
        assert_ne!(read(&other).unwrap(), secret);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_secret_others_can_read_or_a_short_one_is_refused() {
        let dir = temp_dir("refused");
        let path = dir.join("jwt-hs256-secret");
        ensure(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.contains("open to other users (mode 644)") && err.contains("chmod 600"), "{err}");
        assert!(ensure(&path).is_err(), "an existing bad file is reported, not silently used");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "short\n").unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.contains("holds 5 bytes"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
