//! Files that hold secrets (private keys, data keys): written readable by their owner
//! only, and refused when anyone else may read them.

use std::io::Write;
use std::path::Path;

/// Writes `text` to `path`; `private` files are created mode 0600.
pub fn write(path: &Path, text: &str, private: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a secret, refusing a file that its group or others may read or write: a
/// data key anyone on the machine can read protects nothing.
pub fn read(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: mode {:o} lets others read it; make it readable by its owner only (chmod 600)",
            path.display(),
            mode & 0o777
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}
