//! virglrenderer's own messages (`vrend_printf`), which it would otherwise
//! print to stderr, go through `tracing` instead, rate-limited; among them,
//! the renderer's reports of `GL_OUT_OF_MEMORY` are remembered, so that a
//! worker that reached its memory limit can say so.

use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virglrenderer_sys as sys;

use crate::callbacks::no_unwind;

/// `GL_OUT_OF_MEMORY`, as vrend prints it in a context error.
const GL_OUT_OF_MEMORY: &str = "1285";
/// Messages logged per process; the rest are counted only. A client can
/// make the renderer print one line per command.
const MAX_LOGGED: u32 = 64;

static OUT_OF_MEMORY: AtomicBool = AtomicBool::new(false);
static SEEN: AtomicU32 = AtomicU32::new(0);

extern "C" {
    /// C's `vsnprintf`, with `va_list` as bindgen spells it for this target.
    fn vsnprintf(
        buf: *mut c_char,
        size: usize,
        fmt: *const c_char,
        ap: *mut sys::__va_list_tag,
    ) -> c_int;
}

/// Routes virglrenderer's messages here; call before `virgl_renderer_init`.
pub(crate) fn install() {
    // SAFETY: `on_message` has the callback's exact signature and, being a
    // plain function, lives for the whole process.
    unsafe { sys::virgl_set_debug_callback(Some(on_message)) };
}

/// Whether the renderer reported running out of memory since the last call.
pub(crate) fn take_out_of_memory() -> bool {
    OUT_OF_MEMORY.swap(false, Ordering::AcqRel)
}

/// vrend prints context errors as
/// `<function>: context error reported <ctx> "<name>" <error> <value>`; the
/// value is last, after the client-chosen name, so a name cannot fake it.
pub(crate) fn is_out_of_memory(message: &str) -> bool {
    message.contains("context error reported")
        && message.split_whitespace().next_back() == Some(GL_OUT_OF_MEMORY)
}

unsafe extern "C" fn on_message(fmt: *const c_char, ap: *mut sys::__va_list_tag) {
    no_unwind("debug callback", || {
        if fmt.is_null() {
            return;
        }
        let mut buf = [0u8; 512];
        // SAFETY: `buf` is writable for its whole length and vsnprintf writes
        // at most that many bytes, NUL included; `fmt` and `ap` come from
        // vrend_printf, which passes its own format string and argument list.
        let n = unsafe { vsnprintf(buf.as_mut_ptr().cast(), buf.len(), fmt, ap) };
        let Ok(n) = usize::try_from(n) else { return };
        let text = String::from_utf8_lossy(&buf[..n.min(buf.len() - 1)]);
        let text = text.trim_end();
        if is_out_of_memory(text) {
            OUT_OF_MEMORY.store(true, Ordering::Release);
        }
        let seen = SEEN.fetch_add(1, Ordering::Relaxed);
        if seen < MAX_LOGGED {
            tracing::info!(from = "virglrenderer", "{text}");
        } else if seen == MAX_LOGGED {
            tracing::info!(from = "virglrenderer", "further messages not logged");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_is_read_from_the_last_field() {
        assert!(is_out_of_memory(
            "vrend_check_no_error: context error reported 1 \"hog\" Unknown 1285"
        ));
        assert!(!is_out_of_memory(
            "vrend_check_no_error: context error reported 1 \"x 1285\" Unknown 1282"
        ));
        assert!(!is_out_of_memory("map failed for element buffer 1285"));
    }
}
