//! Files the sidecar creates and files it trusts. What it creates is private to it: the
//! state directory is 0700 and every file in it 0600, created without following links.
//! What it reads and acts on (the rules, TLS, identity-policy and boundary files, the
//! AWS-protocol door's credentials) must not be writable by anyone but the server's uid or
//! root, nor any directory on the way to it (as sshd's StrictModes): otherwise any other
//! user could rewrite who is admin. Such a file is opened once and checked and read through
//! that descriptor, so it cannot be swapped in between.

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

/// Most symbolic links followed on the way to a trusted file (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// What other users could do to a directory on the way to a trusted file.
#[derive(Debug, Clone, PartialEq)]
enum Directory {
    /// Only the server's uid or root can change its entries.
    Tight,
    /// The server's own and private (0700): nobody else can reach or change anything below
    /// it, so a directory above it that others may write lets them swap it only for another
    /// private directory of the server's (the state directory in the root of a Kubernetes
    /// `emptyDir`, which is 0777).
    Sealed,
    /// Another user can add, remove or rename its entries: why.
    Loose(String),
}

/// Judges a directory by its owner and mode. `read_only`: it is on a read-only mount, so
/// nobody changes it through this mount (Kubernetes mounts ConfigMap and Secret volumes so,
/// with a 0777 root).
fn directory(owner: u32, mode: u32, read_only: bool, euid: u32) -> Directory {
    if owner == euid && mode & 0o077 == 0 {
        return Directory::Sealed;
    }
    if owner != euid && owner != 0 {
        return Directory::Loose(format!(
            "is owned by uid {owner}, neither the server's uid {euid} nor root"
        ));
    }
    // Sticky (as /tmp): others may add entries but not remove or rename the server's.
    if mode & 0o022 != 0 && mode & 0o1000 == 0 && !read_only {
        let who = match mode & 0o022 {
            0o020 => "group",
            0o002 => "others",
            _ => "group and others",
        };
        return Directory::Loose(format!(
            "is writable by {who} (mode {:04o}) and not sticky",
            mode & 0o7777
        ));
    }
    Directory::Tight
}

/// A directory on the way to a trusted file, open.
struct Step {
    dir: rustix::fd::OwnedFd,
    /// Where it was found, for messages.
    path: std::path::PathBuf,
    /// Why another user could decide what is found below it, if one could.
    loose: Option<String>,
}

/// A component of a path still to walk.
enum Part {
    Name(std::ffi::OsString),
    Parent,
}

fn parts(path: &Path) -> Vec<Part> {
    use std::path::Component;
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(Part::Name(name.to_owned())),
            Component::ParentDir => Some(Part::Parent),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Opens a file the sidecar acts on, once, and checks what was opened, as sshd's StrictModes
/// does: walked from `/` one directory at a time with no link followed by the kernel, every
/// directory on the way (link targets' included) owned by the server's uid or root and not
/// writable by group or others (sticky directories such as /tmp, and read-only mounts,
/// aside; above a private directory of the server's, see [`Directory::Sealed`]); a link
/// followed only when owned by the server's uid or root and in such a directory
/// (Kubernetes reaches ConfigMap and Secret files through two); the file itself regular,
/// owned by the server's uid or root, and not writable by group or others. Checking the
/// open descriptor, not the path, leaves no time to swap the file between check and read.
fn open_trusted(path: &Path) -> io::Result<(File, rustix::fs::Stat)> {
    use rustix::fs::{FileType, Mode, OFlags};
    let walk = TrustedWalk::new(path)?;
    let root = rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut steps = vec![walk.step(root, "/".into(), None)?];
    // Set once a link is read from a directory another user could change: whatever it
    // points to, that user chose it.
    let mut chosen_by_others: Option<String> = None;
    let mut links = 0;
    let mut pending: std::collections::VecDeque<Part> = parts(&walk.absolute).into();
    // Each turn takes one part; only links add parts, at most MAX_LINKS of PATH_MAX bytes.
    while let Some(part) = pending.pop_front() {
        let Some(top) = steps.last() else {
            break;
        };
        let name = match part {
            Part::Parent => {
                // `/..` is `/`.
                if steps.len() > 1 {
                    steps.pop();
                }
                continue;
            }
            Part::Name(name) => name,
        };
        let at = top.path.join(&name);
        let last = pending.is_empty();
        if last && let Some(opened) = walk.open_file(top, &name, &at, chosen_by_others.as_ref())? {
            return Ok(opened);
        }
        let fd = rustix::fs::openat(
            &top.dir,
            name.as_os_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory if !last => {
                let above = top.loose.clone();
                steps.push(walk.step(fd, at, above.as_ref())?);
            }
            FileType::Symlink => {
                links += 1;
                let target = walk.read_link(&fd, &stat, &at, links)?;
                if chosen_by_others.is_none() {
                    chosen_by_others.clone_from(&top.loose);
                }
                if target.is_absolute() {
                    steps.truncate(1);
                }
                for part in parts(&target).into_iter().rev() {
                    pending.push_front(part);
                }
            }
            // Opening it met a link; this one did not.
            FileType::RegularFile if last => {
                return Err(walk.on_the_way(&at, "changed while it was opened"));
            }
            _ if last => return Err(walk.on_the_way(&at, "is not a regular file")),
            _ => return Err(walk.on_the_way(&at, "is not a directory")),
        }
    }
    // The path ended in a directory (`..`, `/`).
    Err(refused(path, "is not a regular file".into()))
}

/// The walk [`open_trusted`] makes to one file: what each of its steps checks against.
struct TrustedWalk<'a> {
    /// The path as given, for messages.
    path: &'a Path,
    /// The path from `/`.
    absolute: std::path::PathBuf,
    euid: u32,
}

impl<'a> TrustedWalk<'a> {
    fn new(path: &'a Path) -> io::Result<TrustedWalk<'a>> {
        let absolute = if path.is_absolute() {
            path.to_owned()
        } else {
            std::env::current_dir()?.join(path)
        };
        Ok(TrustedWalk {
            path,
            absolute,
            euid: server_uid(),
        })
    }

    /// Refuses the file because of `what`, the file itself or a place on the way to it.
    fn on_the_way(&self, what: &Path, why: &str) -> io::Error {
        if what == self.absolute {
            refused(self.path, why.to_owned())
        } else {
            refused(
                what,
                format!("(on the way to `{}`) {why}", self.path.display()),
            )
        }
    }

    /// Judges the directory `dir`, found at `at` below a directory that `above` says why
    /// another user could change (if one could).
    fn step(
        &self,
        dir: rustix::fd::OwnedFd,
        at: std::path::PathBuf,
        above: Option<&String>,
    ) -> io::Result<Step> {
        use rustix::fs::StatVfsMountFlags;
        let stat = rustix::fs::fstat(&dir)?;
        // The mount matters only for a directory its mode leaves open.
        let writable = stat.st_mode & 0o022 != 0 && stat.st_mode & 0o1000 == 0;
        let read_only = writable
            && rustix::fs::fstatvfs(&dir)?
                .f_flag
                .contains(StatVfsMountFlags::RDONLY);
        let loose = match directory(stat.st_uid, stat.st_mode, read_only, self.euid) {
            Directory::Sealed => None,
            Directory::Tight => above.cloned(),
            Directory::Loose(why) => above.cloned().or_else(|| {
                Some(
                    self.on_the_way(
                        &at,
                        &format!("{why}: whoever may write it could put another file there"),
                    )
                    .to_string(),
                )
            }),
        };
        Ok(Step {
            dir,
            path: at,
            loose,
        })
    }

    /// Opens and checks the file itself, `name` in `top` (found at `at`); `None` when it is
    /// a link, to be read instead. `chosen_by_others`: why another user chose a link on the
    /// way, if one did.
    fn open_file(
        &self,
        top: &Step,
        name: &std::ffi::OsStr,
        at: &Path,
        chosen_by_others: Option<&String>,
    ) -> io::Result<Option<(File, rustix::fs::Stat)>> {
        use rustix::fs::{Mode, OFlags};
        // O_NONBLOCK so that a FIFO cannot hang the server.
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        match rustix::fs::openat(&top.dir, name, flags, Mode::empty()) {
            Ok(fd) => {
                let stat = rustix::fs::fstat(&fd)?;
                if let Some(why) = chosen_by_others.or(top.loose.as_ref()) {
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, why.clone()));
                }
                check_trusted_file(self.path, at != self.absolute, at, &stat, self.euid)?;
                Ok(Some((File::from(fd), stat)))
            }
            // A link: read by the caller.
            Err(rustix::io::Errno::LOOP) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The target of the link `fd` (found at `at`, the `links`th on the way), refused when
    /// there are too many links or this one is not owned by the server's uid or root.
    fn read_link(
        &self,
        fd: &rustix::fd::OwnedFd,
        stat: &rustix::fs::Stat,
        at: &Path,
        links: usize,
    ) -> io::Result<std::path::PathBuf> {
        if links > MAX_LINKS {
            return Err(refused(
                self.path,
                format!("is reached through more than {MAX_LINKS} symbolic links"),
            ));
        }
        let (owner, euid) = (stat.st_uid, self.euid);
        if owner != euid && owner != 0 {
            return Err(self.on_the_way(
                at,
                &format!(
                    "is a symbolic link owned by uid {owner}, neither the server's uid {euid} nor root"
                ),
            ));
        }
        // Read from the link that was checked, not by name again.
        let target = rustix::fs::readlinkat(fd, "", Vec::new())?;
        Ok(std::path::PathBuf::from(
            <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(target.into_bytes()),
        ))
    }
}

/// Refuses an opened file that is not regular, owned by the server's uid or root, and
/// writable by no one else. `at` is where it was found, named too when `elsewhere` (a link
/// led there, or `path` is relative).
fn check_trusted_file(
    path: &Path,
    elsewhere: bool,
    at: &Path,
    stat: &rustix::fs::Stat,
    euid: u32,
) -> io::Result<()> {
    let name = if elsewhere {
        format!("`{}` (`{}`)", path.display(), at.display())
    } else {
        format!("`{}`", path.display())
    };
    let refuse =
        |why: String| io::Error::new(io::ErrorKind::PermissionDenied, format!("{name} {why}"));
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(refuse("is not a regular file".into()));
    }
    let owner = stat.st_uid;
    if owner != euid && owner != 0 {
        return Err(refuse(format!(
            "is owned by uid {owner}, neither the server's uid {euid} nor root"
        )));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(refuse(format!(
            "is writable by group or others (mode {:04o})",
            stat.st_mode & 0o7777
        )));
    }
    Ok(())
}

/// Reads all of an opened file into `buffer` (sized once from `size`, so that a secret is
/// not left behind in grown-out copies).
fn read_opened(mut file: File, size: i64, buffer: &mut Vec<u8>) -> io::Result<()> {
    // A hint only: the file may still grow, and a huge size is not allocated up front.
    let hint = usize::try_from(size).unwrap_or(0).min(1 << 20);
    buffer.reserve_exact(hint.saturating_add(1));
    io::Read::read_to_end(&mut file, buffer)?;
    Ok(())
}

/// Reads a file the sidecar acts on (the rules, TLS and identity-policy files), from the
/// descriptor [`open_trusted`] checked.
pub fn read_trusted(path: &Path) -> io::Result<Vec<u8>> {
    let (file, stat) = open_trusted(path)?;
    let mut bytes = Vec::new();
    read_opened(file, stat.st_size, &mut bytes)?;
    Ok(bytes)
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
/// file [`open_trusted`] accepts that others may not read either. Its group may (a
/// Kubernetes Secret mounted with `fsGroup` is 0440 or 0640), so that is allowed.
pub fn read_secret_trusted(path: &Path) -> io::Result<Zeroizing<Vec<u8>>> {
    let (file, stat) = open_trusted(path)?;
    if stat.st_mode & 0o004 != 0 {
        return Err(refused(
            path,
            format!(
                "may be read by others (mode {:04o}); it holds secrets: make it 0600",
                stat.st_mode & 0o7777
            ),
        ));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    read_opened(file, stat.st_size, &mut bytes)?;
    Ok(bytes)
}

/// What a trusted file holds now and who may change it, to tell a change: by content (not
/// by modification time), owner and mode, or why it is refused, so that a file refused for
/// its mode or a directory's is read again once that is fixed. `None` when there is none.
pub fn fingerprint(path: &Path) -> Option<[u8; 32]> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    match open_trusted(path) {
        Ok((file, stat)) => {
            let mut bytes = Zeroizing::new(Vec::new());
            read_opened(file, stat.st_size, &mut bytes).ok()?;
            context.update(b"trusted\0");
            context.update(&stat.st_uid.to_le_bytes());
            context.update(&stat.st_mode.to_le_bytes());
            context.update(&bytes);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            context.update(b"refused\0");
            context.update(e.to_string().as_bytes());
        }
    }
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

    fn set_mode(path: &Path, bits: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits)).unwrap();
    }

    fn error_of<T: std::fmt::Debug>(result: io::Result<T>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn a_trusted_file_is_writable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "x").unwrap();
        for (bits, trusted) in [(0o600, true), (0o644, true), (0o664, false), (0o646, false)] {
            set_mode(&path, bits);
            assert_eq!(read_trusted(&path).is_ok(), trusted, "mode {bits:o}");
        }
        let error = error_of(read_trusted(&path));
        assert_eq!(
            error,
            format!(
                "`{}` is writable by group or others (mode 0646)",
                path.display()
            )
        );
        // A secret may be read by its group (a Secret mounted with fsGroup), not by others.
        set_mode(&path, 0o640);
        assert_eq!(read_secret_trusted(&path).unwrap().as_slice(), b"x");
        set_mode(&path, 0o644);
        let error = error_of(read_secret_trusted(&path));
        assert!(
            error.contains("may be read by others (mode 0644)"),
            "{error}"
        );
        // Neither a directory nor a FIFO (which would block a plain open) is read.
        let error = error_of(read_trusted(dir.path()));
        assert!(error.ends_with("is not a regular file"), "{error}");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let error = error_of(read_trusted(&fifo));
        assert!(error.ends_with("is not a regular file"), "{error}");
    }

    #[test]
    fn directories_are_judged_by_owner_mode_sticky_bit_and_mount() {
        let euid = 1000;
        let loose = |why: &str| Directory::Loose(why.to_owned());
        for (owner, mode, read_only, verdict) in [
            (0, 0o40755, false, Directory::Tight),
            (euid, 0o40750, false, Directory::Tight),
            (euid, 0o40700, false, Directory::Sealed),
            // Root's private directory hides nothing from root.
            (0, 0o40700, false, Directory::Tight),
            (
                0,
                0o40775,
                false,
                loose("is writable by group (mode 0775) and not sticky"),
            ),
            (
                0,
                0o40757,
                false,
                loose("is writable by others (mode 0757) and not sticky"),
            ),
            // /tmp.
            (0, 0o41777, false, Directory::Tight),
            // The root of an emptyDir volume, with fsGroup.
            (
                0,
                0o42777,
                false,
                loose("is writable by group and others (mode 2777) and not sticky"),
            ),
            // The root of a ConfigMap volume, mounted read-only.
            (0, 0o42777, true, Directory::Tight),
            (
                1001,
                0o40755,
                false,
                loose("is owned by uid 1001, neither the server's uid 1000 nor root"),
            ),
            // Its owner could not change it through a read-only mount, but it is not trusted.
            (
                1001,
                0o40755,
                true,
                loose("is owned by uid 1001, neither the server's uid 1000 nor root"),
            ),
        ] {
            assert_eq!(
                directory(owner, mode, read_only, euid),
                verdict,
                "uid {owner} mode {mode:o} read-only {read_only}"
            );
        }
    }

    #[test]
    fn every_directory_on_the_way_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        set_mode(&shared, 0o755);
        let path = shared.join("rules.toml");
        std::fs::write(&path, "x").unwrap();
        set_mode(&path, 0o644);
        assert_eq!(read_trusted(&path).unwrap(), b"x");

        set_mode(&shared, 0o775);
        let error = error_of(read_trusted(&path));
        assert_eq!(
            error,
            format!(
                "`{}` (on the way to `{}`) is writable by group (mode 0775) and not sticky: whoever may write it could put another file there",
                shared.display(),
                path.display()
            )
        );
        // A sticky directory, as /tmp.
        set_mode(&shared, 0o1777);
        assert_eq!(read_trusted(&path).unwrap(), b"x");
        // The same path through `..`.
        let detour = shared.join("..").join("shared").join("rules.toml");
        assert_eq!(read_trusted(&detour).unwrap(), b"x");

        // Above a private directory of the server's, a directory others may write is
        // tolerated (the root of a Kubernetes emptyDir); not above one others may enter.
        set_mode(dir.path(), 0o777);
        set_mode(&shared, 0o700);
        assert_eq!(read_trusted(&path).unwrap(), b"x");
        set_mode(&shared, 0o755);
        let error = error_of(read_trusted(&path));
        assert!(
            error.starts_with(&format!("`{}` (on the way to", dir.path().display()))
                && error.contains("writable by group and others (mode 0777)"),
            "{error}"
        );
        set_mode(dir.path(), 0o700);
    }

    #[test]
    fn links_are_followed_only_through_directories_no_one_else_may_write() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let mkdir = |name: &str, bits| {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).unwrap();
            set_mode(&path, bits);
            path
        };
        // A ConfigMap volume as the kubelet writes it: the file through `..data`, itself a
        // link to the current timestamped directory.
        let volume = mkdir("volume", 0o755);
        let version = volume.join("..2025_01_01_00_00_00.000000001");
        std::fs::create_dir(&version).unwrap();
        set_mode(&version, 0o755);
        std::fs::write(version.join("rules.toml"), "configmap").unwrap();
        set_mode(&version.join("rules.toml"), 0o644);
        symlink("..2025_01_01_00_00_00.000000001", volume.join("..data")).unwrap();
        symlink("..data/rules.toml", volume.join("rules.toml")).unwrap();
        assert_eq!(
            read_trusted(&volume.join("rules.toml")).unwrap(),
            b"configmap"
        );

        // A link to a file in a directory others may write.
        let loose = mkdir("loose", 0o777);
        std::fs::write(loose.join("rules.toml"), "loose").unwrap();
        set_mode(&loose.join("rules.toml"), 0o644);
        symlink("../loose/rules.toml", volume.join("elsewhere")).unwrap();
        let error = error_of(read_trusted(&volume.join("elsewhere")));
        assert!(
            error.starts_with(&format!("`{}` (on the way to", loose.display())),
            "{error}"
        );
        // A link in a directory others may write, to a trusted file: they chose it.
        symlink(volume.join("rules.toml"), loose.join("link")).unwrap();
        let error = error_of(read_trusted(&loose.join("link")));
        assert!(
            error.starts_with(&format!("`{}` (on the way to", loose.display())),
            "{error}"
        );
        // A loop of links ends.
        symlink("b", volume.join("a")).unwrap();
        symlink("a", volume.join("b")).unwrap();
        let error = error_of(read_trusted(&volume.join("a")));
        assert!(
            error.ends_with("through more than 40 symbolic links"),
            "{error}"
        );
        // A path through a file.
        let error = error_of(read_trusted(&version.join("rules.toml").join("x")));
        assert!(error.ends_with("is not a directory"), "{error}");
        // What is missing is NotFound, as callers expect.
        let missing = read_trusted(&volume.join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
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
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let third = fingerprint(&path);
        assert_ne!(third, second);
        // Refused for its directory, then trusted again once that is fixed.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        assert_ne!(fingerprint(&path), third);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(fingerprint(&path), third);
        assert_eq!(fingerprint(&dir.path().join("missing")), None);
    }
}
