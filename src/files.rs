//! Files the sidecar creates and files it trusts. What it creates is private to it: the
//! state directory is 0700 and every file in it 0600, created without following links.
//! What it reads and acts on (the rules, TLS and identity-policy files) must not be
//! writable by anyone but the server's uid or root (as sshd's StrictModes): otherwise any
//! other user could rewrite who is admin.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

use zeroize::Zeroizing;

/// Shortest admin token accepted from an existing file, in bytes.
pub const MIN_TOKEN_BYTES: usize = 32;

fn refused(path: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("`{}` {why}", path.display()),
    )
}

fn server_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Opening flags that refuse a symbolic link in the last component.
fn no_follow() -> i32 {
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

/// Creates `path` (and its parents) as a directory only the server may enter (0700), or
/// makes an existing one so; refuses one owned by another uid.
pub fn private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let metadata = std::fs::symlink_metadata(path)?;
    if !metadata.is_dir() {
        return Err(refused(path, "is not a directory".into()));
    }
    if metadata.uid() != server_uid() {
        return Err(refused(
            path,
            format!(
                "is owned by uid {}, not the server's uid {}",
                metadata.uid(),
                server_uid()
            ),
        ));
    }
    if metadata.mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates a new file only the server may read (0600); an existing file or a link at
/// `path` is an error.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(path)
}

/// Opens `path` for appending, creating it 0600 if missing; a link is refused, and so is an
/// existing file that is not the server's or that others may read or write.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(path)
        .map_err(|e| {
            // O_NOFOLLOW met a link.
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                refused(path, "is a symbolic link".into())
            } else {
                e
            }
        })?;
    check_private(path, &file.metadata()?)?;
    Ok(file)
}

/// Refuses what is not a regular file of the server's uid with no group or other bits.
fn check_private(path: &Path, metadata: &std::fs::Metadata) -> io::Result<()> {
    if !metadata.file_type().is_file() {
        return Err(refused(path, "is not a regular file".into()));
    }
    if metadata.uid() != server_uid() {
        return Err(refused(
            path,
            format!("is owned by uid {}, not the server's", metadata.uid()),
        ));
    }
    if metadata.mode() & 0o077 != 0 {
        return Err(refused(
            path,
            format!(
                "may be read or written by others (mode {:04o}); it must be 0600",
                metadata.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Refuses a file the sidecar acts on when someone other than the server's uid or root
/// could change it: owned by another uid, or group- or world-writable (links are followed,
/// as Kubernetes mounts configuration through them).
pub fn check_trusted(path: &Path) -> io::Result<()> {
    let metadata = std::fs::metadata(path)?;
    let owner = metadata.uid();
    if owner != server_uid() && owner != 0 {
        return Err(refused(
            path,
            format!(
                "is owned by uid {owner}, neither the server's uid {} nor root",
                server_uid()
            ),
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(refused(
            path,
            format!(
                "is writable by group or others (mode {:04o})",
                metadata.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Reads a file the sidecar acts on, after [`check_trusted`].
pub fn read_trusted(path: &Path) -> io::Result<Vec<u8>> {
    check_trusted(path)?;
    std::fs::read(path)
}

/// Reads an existing secret the server created: a regular file (not a link) owned by the
/// server's uid, with no group or other bits, holding at least `min_len` bytes once
/// trimmed. `Ok(None)` when there is no file.
pub fn read_private_secret(path: &Path, min_len: usize) -> io::Result<Option<Zeroizing<String>>> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    check_private(path, &metadata)?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(no_follow())
        .open(path)?;
    let mut text = Zeroizing::new(String::new());
    io::Read::read_to_string(&mut file, &mut text)?;
    let secret = text.trim();
    if secret.len() < min_len {
        return Err(refused(
            path,
            format!(
                "holds {} bytes; at least {min_len} are needed",
                secret.len()
            ),
        ));
    }
    Ok(Some(Zeroizing::new(secret.to_owned())))
}

/// Writes `secret` as hex to a new private file (see [`create_private`]), synced with its
/// directory entry, so the secret is durable before anything depends on it. Written beside
/// and linked into place: a start killed halfway leaves no empty or partial file at `path`,
/// and an existing file there is an error. Returns the hex text, as a later
/// [`read_private_secret`] reads it.
pub fn create_private_secret(path: &Path, secret: &[u8]) -> io::Result<Zeroizing<String>> {
    let text: Zeroizing<String> =
        Zeroizing::new(secret.iter().map(|b| format!("{b:02x}")).collect());
    create_private_text(path, &format!("{}\n", text.as_str()))?;
    Ok(text)
}

/// Writes `text` to a new private file, as [`create_private_secret`] does: beside, synced,
/// then linked into place; an existing file at `path` is an error.
pub fn create_private_text(path: &Path, text: &str) -> io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = Path::new(&partial);
    // What an interrupted start left (removing a link removes the link only).
    match std::fs::remove_file(partial) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = create_private(partial)?;
    io::Write::write_all(&mut file, text.as_bytes())?;
    file.sync_all()?;
    // A link, unlike a rename, fails rather than replace a file already at `path`.
    std::fs::hard_link(partial, path)?;
    std::fs::remove_file(partial)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a file of secrets the sidecar acts on (the AWS-protocol door's credentials): a
/// file [`check_trusted`] accepts that others may not read either. Its group may (a
/// Kubernetes Secret mounted with `fsGroup` is 0440 or 0640), so that is allowed.
pub fn read_secret_trusted(path: &Path) -> io::Result<Zeroizing<Vec<u8>>> {
    check_trusted(path)?;
    let mode = std::fs::metadata(path)?.mode();
    if mode & 0o004 != 0 {
        return Err(refused(
            path,
            format!(
                "may be read by others (mode {:04o}); it holds secrets: make it 0600",
                mode & 0o7777
            ),
        ));
    }
    Ok(Zeroizing::new(std::fs::read(path)?))
}

/// What a file holds now and who may change it, to tell a change: by content (not by
/// modification time), owner and mode, so that a file refused for its mode is read again
/// once its mode is fixed. `None` when it cannot be read.
pub fn fingerprint(path: &Path) -> Option<[u8; 32]> {
    let metadata = std::fs::metadata(path).ok()?;
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(&metadata.uid().to_le_bytes());
    context.update(&metadata.mode().to_le_bytes());
    context.update(&std::fs::read(path).ok()?);
    context.finish().as_ref().try_into().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn what_the_server_creates_is_private_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        private_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);

        let file = state.join("f");
        create_private(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert!(
            create_private(&file).is_err(),
            "an existing file is not reused"
        );

        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "x").unwrap();
        let link = state.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_private(&link).is_err());
        let error = open_private_append(&link).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "x");

        let audit = state.join("audit");
        open_private_append(&audit).unwrap();
        assert_eq!(mode(&audit), 0o600);
        std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = open_private_append(&audit).unwrap_err().to_string();
        assert!(error.contains("mode 0644"), "{error}");
    }

    #[test]
    fn a_secret_is_used_only_when_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        assert_eq!(read_private_secret(&path, 32).unwrap(), None);
        std::fs::write(&path, "a\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_private_secret(&path, 32).unwrap_err().to_string();
        assert!(error.contains("mode 0644"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = read_private_secret(&path, 32).unwrap_err().to_string();
        assert!(error.contains("holds 1 bytes"), "{error}");
        std::fs::write(&path, format!("{}\n", "b".repeat(64))).unwrap();
        assert_eq!(
            read_private_secret(&path, 32)
                .unwrap()
                .as_deref()
                .map(String::as_str),
            Some("b".repeat(64).as_str())
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let error = read_private_secret(&link, 32).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
    }

    #[test]
    fn a_new_secret_appears_whole_even_after_an_interrupted_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        // What a start killed while writing leaves: a partial file beside, none at `path`.
        std::fs::write(dir.path().join("kek.partial"), "0f").unwrap();
        let written = create_private_secret(&path, &[0xab; 32]).unwrap();
        assert_eq!(written.as_str(), "ab".repeat(32));
        let read = read_private_secret(&path, 64).unwrap().unwrap();
        assert_eq!(read, written);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(!dir.path().join("kek.partial").exists());
        // An existing secret is never replaced.
        let error = create_private_secret(&path, &[0xcd; 32]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        let read = read_private_secret(&path, 64).unwrap().unwrap();
        assert_eq!(read.as_str(), "ab".repeat(32));
    }

    #[test]
    fn a_trusted_file_is_writable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "").unwrap();
        for (bits, trusted) in [(0o600, true), (0o644, true), (0o664, false), (0o646, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bits)).unwrap();
            assert_eq!(check_trusted(&path).is_ok(), trusted, "mode {bits:o}");
        }
        let error = check_trusted(&path).unwrap_err().to_string();
        assert!(
            error.contains("writable by group or others (mode 0646)"),
            "{error}"
        );
    }

    #[test]
    fn a_change_is_seen_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "one").unwrap();
        let first = fingerprint(&path);
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "two").unwrap();
        // Same modification time, new content: still a change.
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let second = fingerprint(&path);
        assert_ne!(second, first);
        // Same content, another mode: a change too.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_ne!(fingerprint(&path), second);
        assert_eq!(fingerprint(&dir.path().join("missing")), None);
    }
}
