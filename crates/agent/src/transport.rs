//! Where the host is: a virtio-serial port (QEMU) or a vsock (Firecracker).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, Backlog, Shutdown, SockFlag, SockType, VsockAddr, accept4, bind, listen, shutdown, socket,
};

use crate::server::Connection;

/// The device of the virtio-serial port called `name`, if it is there yet.
pub fn find_virtio_port(name: &str) -> Option<PathBuf> {
    find_virtio_port_in(name, Path::new("/sys"), Path::new("/dev"))
}

/// [`find_virtio_port`] under other roots. `/dev/virtio-ports/NAME` is a
/// udev rule's link, which an initramfs without udev does not have; the
/// names are also in sysfs, next to the `/dev/vportNpM` devtmpfs creates.
pub fn find_virtio_port_in(name: &str, sys: &Path, dev: &Path) -> Option<PathBuf> {
    let link = dev.join("virtio-ports").join(name);
    if link.exists() {
        return Some(link);
    }
    let mut ports: Vec<_> = fs::read_dir(sys.join("class/virtio-ports")).ok()?.flatten().collect();
    ports.sort_by_key(|entry| entry.file_name());
    ports.into_iter().find_map(|entry| {
        let port_name = fs::read_to_string(entry.path().join("name")).ok()?;
        (port_name.trim_end() == name).then(|| dev.join(entry.file_name()))
    })
}

/// Opens the virtio-serial port called `name` for reading and writing.
pub fn open_virtio_port(name: &str) -> io::Result<File> {
    let path = find_virtio_port(name).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("no virtio-serial port is named {name:?}"))
    })?;
    OpenOptions::new().read(true).write(true).open(path)
}

/// A vsock stream socket listening on a port, for any CID.
#[derive(Debug)]
pub struct VsockListener {
    fd: OwnedFd,
}

impl VsockListener {
    pub fn bind(port: u32) -> io::Result<Self> {
        let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        bind(fd.as_raw_fd(), &VsockAddr::new(nix::libc::VMADDR_CID_ANY, port))?;
        listen(&fd, Backlog::new(4)?)?;
        Ok(Self { fd })
    }

    /// Waits for the host to connect.
    pub fn accept(&self) -> io::Result<Connection> {
        let stream = loop {
            match accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => break File::from(adopt(fd)),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let reader = stream.try_clone()?;
        let closer = stream.try_clone()?;
        Ok(Connection::stream(reader, stream, move || {
            let _ = shutdown(closer.as_raw_fd(), Shutdown::Both);
        }))
    }
}

/// Takes ownership of a descriptor `accept4` just returned.
#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: `accept4` returned a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ports_by_their_sysfs_name() {
        let root = tempfile::tempdir().unwrap();
        let (sys, dev) = (root.path().join("sys"), root.path().join("dev"));
        for (port, name) in [("vport0p0", "org.qemu.guest_agent.0"), ("vport1p1", "hearth.agent")] {
            fs::create_dir_all(sys.join("class/virtio-ports").join(port)).unwrap();
            fs::write(sys.join("class/virtio-ports").join(port).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(find_virtio_port_in("hearth.agent", &sys, &dev), Some(dev.join("vport1p1")));
        assert_eq!(find_virtio_port_in("other", &sys, &dev), None);

        // A udev link wins when there is one.
        fs::create_dir_all(dev.join("virtio-ports")).unwrap();
        fs::write(dev.join("virtio-ports/hearth.agent"), "").unwrap();
        assert_eq!(
            find_virtio_port_in("hearth.agent", &sys, &dev),
            Some(dev.join("virtio-ports/hearth.agent"))
        );
    }
}
