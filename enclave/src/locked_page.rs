//! One page of memory for a secret: its own anonymous mapping, locked into
//! RAM (`mlock`: never written to swap), excluded from core dumps
//! (`MADV_DONTDUMP`), and zeroed, unlocked and unmapped when dropped.
//!
//! This is the only module of the crate with `unsafe` code. Each block is a
//! system call on exactly the range this type mapped, or a view of that
//! range as a byte slice whose lifetime is tied to the owner.
//!
//! The `memsec`, `secrets` and `region` crates were considered: `secrets`
//! needs libsodium, `region` has no `madvise`, and `memsec`'s allocator puts
//! canaries and guard pages around heap allocations behind an entirely
//! `unsafe` API. What the key needs is one page-aligned mapping with two
//! flags, which `rustix` (already in the build) provides as typed calls.

use std::ffi::c_void;
use std::ptr::{self, NonNull};

use rustix::mm::{self, Advice, MapFlags, ProtFlags};
use zeroize::Zeroize as _;

/// Why a locked page could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LockedPageError {
    #[error("cannot map a page for the secret (mmap): {0}")]
    Map(#[source] rustix::io::Errno),
    #[error("cannot exclude the secret's page from core dumps (madvise MADV_DONTDUMP): {0}")]
    DontDump(#[source] rustix::io::Errno),
    #[error(
        "cannot lock the secret's page in memory (mlock; is RLIMIT_MEMLOCK at least one page?): {0}"
    )]
    Lock(#[source] rustix::io::Errno),
}

/// A page of read-write memory that is locked, left out of core dumps and
/// wiped on drop. Neither `Clone` nor `Debug`: its bytes are never copied
/// by this type or shown.
pub(crate) struct LockedPage {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the page is owned by this value alone (the mapping is created in
// `new` and released in `drop`, and no pointer to it escapes except through
// borrows of `self`), so moving the owner to another thread is sound.
unsafe impl Send for LockedPage {}
// SAFETY: shared access only hands out `&[u8]`; mutation needs `&mut self`.
// The usual borrow rules therefore prevent data races, as for a `Box<[u8]>`.
unsafe impl Sync for LockedPage {}

impl LockedPage {
    /// Maps one page, excludes it from core dumps and locks it, all before
    /// any secret is written to it. The page starts zeroed.
    pub(crate) fn new() -> Result<Self, LockedPageError> {
        let len = rustix::param::page_size();
        // SAFETY: an anonymous private mapping at an address chosen by the
        // kernel (null hint, no MAP_FIXED) cannot overlap any existing
        // allocation, so it aliases nothing Rust knows about.
        let raw = unsafe {
            mm::mmap_anonymous(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(LockedPageError::Map)?;
        let ptr =
            NonNull::new(raw.cast::<u8>()).ok_or(LockedPageError::Map(rustix::io::Errno::NOMEM))?;
        // From here on, `Drop` releases the mapping on every error path.
        let page = Self { ptr, len };
        // SAFETY: `madvise` and `mlock` change properties of the pages of
        // exactly the range mapped above and touch no memory contents that
        // Rust could observe differently.
        unsafe { mm::madvise(page.raw(), len, Advice::LinuxDontDump) }
            .map_err(LockedPageError::DontDump)?;
        // SAFETY: as above.
        unsafe { mm::mlock(page.raw(), len) }.map_err(LockedPageError::Lock)?;
        Ok(page)
    }

    /// The page's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` bytes that are mapped readable and
        // writable for as long as `self` lives (unmapped only in `drop`),
        // initialised (anonymous mappings are zero-filled), and only
        // mutated through `&mut self`, which cannot coexist with this borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The page's bytes, for writing a secret into place.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Overwrites the whole page with zeros in a way the compiler cannot
    /// elide (volatile writes, then a fence). `drop` does this first.
    pub(crate) fn wipe(&mut self) {
        self.bytes_mut().zeroize();
    }

    /// The page's address, for identifying it in `/proc/self/smaps`.
    #[cfg(test)]
    pub(crate) fn address(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    fn raw(&self) -> *mut c_void {
        self.ptr.as_ptr().cast()
    }
}

impl Drop for LockedPage {
    fn drop(&mut self) {
        self.wipe();
        // Failures cannot be reported from `drop` and leave nothing to undo:
        // munlock fails only for a range that is not mapped, and the page is
        // already zero.
        // SAFETY: the range is exactly this value's mapping, which nothing
        // else refers to once `self` is being dropped.
        let _ = unsafe { mm::munlock(self.raw(), self.len) };
        // SAFETY: as above; after this no pointer to the range remains.
        let _ = unsafe { mm::munmap(self.raw(), self.len) };
    }
}

#[cfg(test)]
/// The `VmFlags` of the mapping of `/proc/self/smaps` that holds
/// `address` (pages of several tests' values may be merged into one
/// mapping when they are adjacent and alike).
pub(crate) fn vm_flags(address: usize) -> Option<Vec<String>> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut in_mapping = false;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if in_mapping {
                return Some(flags.split_whitespace().map(str::to_owned).collect());
            }
        } else if let Some((start, rest)) = line.split_once('-') {
            // A mapping's first line: "START-END perms offset dev inode path".
            let end = rest.split_whitespace().next().unwrap_or("");
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                in_mapping = (start..end).contains(&address);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_page_aligned_zeroed_and_writable() {
        let mut page = LockedPage::new().unwrap();
        assert_eq!(page.address() % rustix::param::page_size(), 0);
        assert_eq!(page.bytes().len(), rustix::param::page_size());
        assert!(page.bytes().iter().all(|&b| b == 0));
        page.bytes_mut()[..4].copy_from_slice(b"abcd");
        assert_eq!(&page.bytes()[..4], b"abcd");
    }

    #[test]
    fn wipe_zeroes_every_byte_in_place() {
        let mut page = LockedPage::new().unwrap();
        page.bytes_mut().fill(0xa5);
        assert!(page.bytes().iter().all(|&b| b == 0xa5));
        page.wipe();
        assert!(page.bytes().iter().all(|&b| b == 0));
    }

    #[test]
    fn the_page_is_locked_and_left_out_of_core_dumps() {
        let page = LockedPage::new().unwrap();
        let flags = vm_flags(page.address()).expect("the page is mapped");
        assert!(flags.iter().any(|f| f == "lo"), "not locked: {flags:?}");
        assert!(flags.iter().any(|f| f == "dd"), "dumped: {flags:?}");
    }
}
