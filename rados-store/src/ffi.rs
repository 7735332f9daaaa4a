//! A thin binding to librados' C API, loaded at run time (`dlopen("librados.so.2")`).
//!
//! vdisk links no Ceph code: a machine without librados builds and runs vdisk, and only a
//! `rados://` disk needs the library, with an error saying what to install when it is absent.
//! Each function is looked up once; the table lives for the rest of the process (the library
//! is never unloaded, since librados starts threads that must not outlive their code).

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

pub type rados_t = *mut c_void;
pub type rados_ioctx_t = *mut c_void;
pub type rados_completion_t = *mut c_void;
pub type rados_write_op_t = *mut c_void;
pub type rados_read_op_t = *mut c_void;
pub type rados_omap_iter_t = *mut c_void;
pub type rados_callback_t = Option<unsafe extern "C" fn(rados_completion_t, *mut c_void)>;
pub type rados_watchcb2_t =
    Option<unsafe extern "C" fn(*mut c_void, u64, u64, u64, *mut c_void, usize)>;
pub type rados_watcherrcb_t = Option<unsafe extern "C" fn(*mut c_void, u64, c_int)>;

/// One acknowledgement in a decoded notify reply (librados' `struct notify_ack_t`).
#[repr(C)]
pub struct notify_ack_t {
    pub notifier_id: u64,
    pub cookie: u64,
    pub payload: *mut c_char,
    pub payload_len: u64,
}

/// One watcher that did not acknowledge in time (librados' `struct notify_timeout_t`).
#[repr(C)]
pub struct notify_timeout_t {
    pub notifier_id: u64,
    pub cookie: u64,
}

/// `LIBRADOS_CMPXATTR_OP_*`. The comparison is `given OP stored` (a missing xattr reads as
/// the empty string): `GTE` passes when the stored value is at most the given one.
pub const CMPXATTR_EQ: u8 = 1;
pub const CMPXATTR_GTE: u8 = 4;
/// `LIBRADOS_OP_FLAG_FAILOK`: a failing step does not fail the whole operation.
pub const OP_FLAG_FAILOK: c_int = 0x2;

macro_rules! api {
    ($( $name:ident : fn($($arg:ty),*) $(-> $ret:ty)? ;)*) => {
        /// The librados functions vdisk uses.
        pub struct Api {
            $( pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?, )*
        }

        impl Api {
            fn load(handle: *mut c_void) -> Result<Api, String> {
                Ok(Api {
                    $( $name: {
                        let sym = concat!(stringify!($name), "\0");
                        // SAFETY: `handle` is a live dlopen handle and `sym` is NUL-terminated.
                        let p = unsafe { libc::dlsym(handle, sym.as_ptr().cast()) };
                        if p.is_null() {
                            return Err(format!("librados.so.2 has no symbol {}", stringify!($name)));
                        }
                        // SAFETY: the symbol is the C function of that name, whose signature
                        // (librados.h, stable since Ceph 14) is the one declared here.
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(p) }
                    }, )*
                })
            }
        }
    };
}

api! {
    rados_create2: fn(*mut rados_t, *const c_char, *const c_char, u64) -> c_int;
    rados_conf_read_file: fn(rados_t, *const c_char) -> c_int;
    rados_conf_parse_env: fn(rados_t, *const c_char) -> c_int;
    rados_conf_set: fn(rados_t, *const c_char, *const c_char) -> c_int;
    rados_conf_get: fn(rados_t, *const c_char, *mut c_char, usize) -> c_int;
    rados_connect: fn(rados_t) -> c_int;
    rados_shutdown: fn(rados_t);
    rados_cluster_fsid: fn(rados_t, *mut c_char, usize) -> c_int;
    rados_get_instance_id: fn(rados_t) -> u64;
    rados_getaddrs: fn(rados_t, *mut *mut c_char) -> c_int;
    rados_wait_for_latest_osdmap: fn(rados_t) -> c_int;
    rados_blocklist_add: fn(rados_t, *mut c_char, u32) -> c_int;
    rados_buffer_free: fn(*mut c_char);
    rados_pool_lookup: fn(rados_t, *const c_char) -> i64;
    rados_ioctx_create: fn(rados_t, *const c_char, *mut rados_ioctx_t) -> c_int;
    rados_ioctx_destroy: fn(rados_ioctx_t);
    rados_ioctx_set_namespace: fn(rados_ioctx_t, *const c_char);
    rados_read: fn(rados_ioctx_t, *const c_char, *mut c_char, usize, u64) -> c_int;
    rados_remove: fn(rados_ioctx_t, *const c_char) -> c_int;
    rados_stat: fn(rados_ioctx_t, *const c_char, *mut u64, *mut libc::time_t) -> c_int;
    rados_getxattr: fn(rados_ioctx_t, *const c_char, *const c_char, *mut c_char, usize) -> c_int;
    rados_aio_create_completion2: fn(*mut c_void, rados_callback_t, *mut rados_completion_t) -> c_int;
    rados_aio_wait_for_complete: fn(rados_completion_t) -> c_int;
    rados_aio_get_return_value: fn(rados_completion_t) -> c_int;
    rados_aio_release: fn(rados_completion_t);
    rados_aio_read: fn(rados_ioctx_t, *const c_char, rados_completion_t, *mut c_char, usize, u64) -> c_int;
    rados_aio_remove: fn(rados_ioctx_t, *const c_char, rados_completion_t) -> c_int;
    rados_create_write_op: fn() -> rados_write_op_t;
    rados_release_write_op: fn(rados_write_op_t);
    rados_write_op_create: fn(rados_write_op_t, c_int, *const c_char);
    rados_write_op_write: fn(rados_write_op_t, *const c_char, usize, u64);
    rados_write_op_write_full: fn(rados_write_op_t, *const c_char, usize);
    rados_write_op_truncate: fn(rados_write_op_t, u64);
    rados_write_op_remove: fn(rados_write_op_t);
    rados_write_op_setxattr: fn(rados_write_op_t, *const c_char, *const c_char, usize);
    rados_write_op_cmpxattr: fn(rados_write_op_t, *const c_char, u8, *const c_char, usize);
    rados_write_op_cmpext: fn(rados_write_op_t, *const c_char, usize, u64, *mut c_int);
    rados_write_op_exec: fn(rados_write_op_t, *const c_char, *const c_char, *const c_char, usize, *mut c_int);
    rados_write_op_omap_set2: fn(rados_write_op_t, *const *const c_char, *const *const c_char, *const usize, *const usize, usize);
    rados_write_op_omap_rm_keys2: fn(rados_write_op_t, *const *const c_char, *const usize, usize);
    rados_write_op_set_flags: fn(rados_write_op_t, c_int);
    rados_write_op_operate2: fn(rados_write_op_t, rados_ioctx_t, *const c_char, *mut libc::timespec, c_int) -> c_int;
    rados_aio_write_op_operate: fn(rados_write_op_t, rados_ioctx_t, rados_completion_t, *const c_char, *mut libc::time_t, c_int) -> c_int;
    rados_create_read_op: fn() -> rados_read_op_t;
    rados_release_read_op: fn(rados_read_op_t);
    rados_read_op_read: fn(rados_read_op_t, u64, usize, *mut c_char, *mut usize, *mut c_int);
    rados_read_op_stat: fn(rados_read_op_t, *mut u64, *mut libc::time_t, *mut c_int);
    rados_read_op_omap_get_vals2: fn(rados_read_op_t, *const c_char, *const c_char, u64, *mut rados_omap_iter_t, *mut u8, *mut c_int);
    rados_read_op_operate: fn(rados_read_op_t, rados_ioctx_t, *const c_char, c_int) -> c_int;
    rados_omap_get_next2: fn(rados_omap_iter_t, *mut *mut c_char, *mut *mut c_char, *mut usize, *mut usize) -> c_int;
    rados_omap_get_end: fn(rados_omap_iter_t);
    rados_lock_exclusive: fn(rados_ioctx_t, *const c_char, *const c_char, *const c_char, *const c_char, *mut libc::timeval, u8) -> c_int;
    rados_unlock: fn(rados_ioctx_t, *const c_char, *const c_char, *const c_char) -> c_int;
    rados_list_lockers: fn(rados_ioctx_t, *const c_char, *const c_char, *mut c_int, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize) -> isize;
    rados_break_lock: fn(rados_ioctx_t, *const c_char, *const c_char, *const c_char, *const c_char) -> c_int;
    rados_watch3: fn(rados_ioctx_t, *const c_char, *mut u64, rados_watchcb2_t, rados_watcherrcb_t, u32, *mut c_void) -> c_int;
    rados_watch_check: fn(rados_ioctx_t, u64) -> c_int;
    rados_unwatch2: fn(rados_ioctx_t, u64) -> c_int;
    rados_watch_flush: fn(rados_t) -> c_int;
    rados_notify2: fn(rados_ioctx_t, *const c_char, *const c_char, c_int, u64, *mut *mut c_char, *mut usize) -> c_int;
    rados_notify_ack: fn(rados_ioctx_t, *const c_char, u64, u64, *const c_char, c_int) -> c_int;
    rados_decode_notify_response: fn(*mut c_char, usize, *mut *mut notify_ack_t, *mut usize, *mut *mut notify_timeout_t, *mut usize) -> c_int;
    rados_free_notify_response: fn(*mut notify_ack_t, usize, *mut notify_timeout_t);
}

// SAFETY: the table holds plain function pointers into a library that is never unloaded.
unsafe impl Send for Api {}
// SAFETY: as above; calling them is what needs care, not sharing them.
unsafe impl Sync for Api {}

/// Library file names tried in order.
const LIBRARY_NAMES: [&str; 2] = ["librados.so.2", "librados.so"];

/// The librados function table, loading the library on first use.
///
/// Fails with a message saying what to install when the library is missing.
pub fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        let mut errors = Vec::new();
        // VDISK_LIBRADOS names the library file for installs outside the linker's path.
        let custom = std::env::var("VDISK_LIBRADOS")
            .ok()
            .filter(|s| !s.is_empty());
        let names: Vec<String> = match custom {
            Some(c) => vec![c],
            None => LIBRARY_NAMES.iter().map(|s| s.to_string()).collect(),
        };
        for name in names.iter().map(String::as_str) {
            let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
            // SAFETY: `c` is a NUL-terminated file name; RTLD_NOW resolves everything at once.
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if h.is_null() {
                // SAFETY: dlerror returns a thread-local message or null.
                let msg = unsafe { libc::dlerror() };
                errors.push(if msg.is_null() {
                    format!("{name}: not found")
                } else {
                    // SAFETY: a non-null dlerror result is a NUL-terminated string.
                    unsafe { CStr::from_ptr(msg) }
                        .to_string_lossy()
                        .into_owned()
                });
                continue;
            }
            return Api::load(h);
        }
        Err(format!(
            "rados:// disks need the Ceph client library librados, which could not be loaded \
             ({}); install it (Debian/Ubuntu: apt-get install librados2; Fedora/RHEL: dnf \
             install librados2)",
            errors.join("; ")
        ))
    })
    .as_ref()
    .map_err(Clone::clone)
}
