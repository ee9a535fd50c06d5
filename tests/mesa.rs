//! End-to-end tests (mesa): real Mesa virpipe clients (glxinfo, glmark2,
//! piglit) against the server under test (vtestd, or the reference
//! `virgl_test_server` with `VTESTD_TEST_SERVER=reference`).
//!
//! Each client runs in its own private mount namespace with the server's
//! directory bind-mounted over /tmp (Mesa 22.3 only knows `/tmp/.virgl_test`),
//! on a private `Xvfb -noreset` display. Run them one at a time:
//! `cargo test -p vtestd --test mesa -- --test-threads=1`.

mod common;

use std::fs;
use std::time::Duration;

use common::mesa::{
    failure, glmark2_renderer, glmark2_score, guest_command, mesa_command, run_client, run_piglit,
    run_piglit_as, work_dir, Guest, PIGLIT_PROFILE,
};
use common::server::{Server, ServerKind};
use common::xvfb::Xvfb;

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients)),
    ignore = "needs root, Mesa and the Mesa clients"
)]
fn glxinfo_reports_virgl() {
    let xvfb = Xvfb::start();
    let server = Server::start(ServerKind::under_test());
    let dir = work_dir("glxinfo");
    let mut cmd = mesa_command(&server, &xvfb, "glxinfo", &["-B"]);
    // glxinfo makes its context current on a window it never maps. With
    // virpipe, Mesa's drisw then reads the front buffer back with a core
    // XGetImage, which fails with BadMatch on an unmapped window and kills
    // glxinfo (llvmpipe takes the MIT-SHM path, whose errors are caught).
    // SWRAST_NO_PRESENT=1 makes drisw skip display targets and that readback.
    cmd.env("SWRAST_NO_PRESENT", "1");
    let out = run_client(cmd, &dir, "glxinfo", Duration::from_secs(60));
    assert!(
        out.success(),
        "{}",
        failure("glxinfo -B failed", &out, &server, &xvfb)
    );
    let renderer = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("OpenGL renderer string:"))
        .map(str::trim);
    let Some(renderer) = renderer else {
        panic!(
            "{}",
            failure(
                "glxinfo printed no \"OpenGL renderer string\"",
                &out,
                &server,
                &xvfb
            )
        );
    };
    assert!(
        renderer.contains("virgl"),
        "{}",
        failure(
            &format!("renderer is {renderer:?}, not virgl"),
            &out,
            &server,
            &xvfb
        )
    );
    println!("{:?}: OpenGL renderer string: {renderer}", server.kind);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients)),
    ignore = "needs root, Mesa and the Mesa clients"
)]
fn glmark2_short_run_scores() {
    let xvfb = Xvfb::start();
    let server = Server::start(ServerKind::under_test());
    let dir = work_dir("glmark2");
    let cmd = mesa_command(
        &server,
        &xvfb,
        "glmark2",
        &[
            "--off-screen",
            "-b",
            "build:duration=2",
            "-b",
            "texture:duration=2",
        ],
    );
    let out = run_client(cmd, &dir, "glmark2", Duration::from_secs(120));
    assert!(
        out.success(),
        "{}",
        failure("glmark2 failed", &out, &server, &xvfb)
    );
    let renderer = glmark2_renderer(&out.stdout).unwrap_or_default();
    assert!(
        renderer.contains("virgl"),
        "{}",
        failure(
            &format!("glmark2 GL_RENDERER is {renderer:?}, not virgl"),
            &out,
            &server,
            &xvfb
        )
    );
    let Some(score) = glmark2_score(&out.stdout) else {
        panic!(
            "{}",
            failure(
                "no \"glmark2 Score:\" in glmark2's output",
                &out,
                &server,
                &xvfb
            )
        );
    };
    assert!(
        score > 0,
        "{}",
        failure("glmark2 score is 0", &out, &server, &xvfb)
    );
    for line in out.stdout.lines().filter(|l| l.contains("FPS:")) {
        println!("{:?}: {}", server.kind, line.trim());
    }
    println!("{:?}: glmark2 Score: {score} ({renderer})", server.kind);
    let _ = fs::remove_dir_all(&dir);
}

/// Without `--off-screen` glmark2 draws into an Xvfb window: every frame is
/// read back with TRANSFER_GET2 + RESOURCE_BUSY_WAIT on the display target
/// (`flush_frontbuffer`), a path the off-screen run never takes.
#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients)),
    ignore = "needs root, Mesa and the Mesa clients"
)]
fn glmark2_on_screen_window() {
    let xvfb = Xvfb::start();
    let server = Server::start(ServerKind::under_test());
    let dir = work_dir("glmark2-window");
    let cmd = mesa_command(&server, &xvfb, "glmark2", &["-b", "build:duration=2"]);
    let out = run_client(cmd, &dir, "glmark2", Duration::from_secs(120));
    assert!(
        out.success(),
        "{}",
        failure("on-screen glmark2 failed", &out, &server, &xvfb)
    );
    let renderer = glmark2_renderer(&out.stdout).unwrap_or_default();
    assert!(
        renderer.contains("virgl"),
        "{}",
        failure(
            &format!("glmark2 GL_RENDERER is {renderer:?}, not virgl"),
            &out,
            &server,
            &xvfb
        )
    );
    let score = glmark2_score(&out.stdout).unwrap_or(0);
    assert!(
        score > 0,
        "{}",
        failure("no positive \"glmark2 Score:\"", &out, &server, &xvfb)
    );
    println!("{:?}: on-screen glmark2 Score: {score}", server.kind);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients)),
    ignore = "needs root, Mesa and the Mesa clients"
)]
fn piglit_sanity_matches_reference() {
    let limit = Duration::from_secs(240);
    let xvfb = Xvfb::start();

    let kind = ServerKind::under_test();
    let ours = {
        let server = Server::start(kind);
        run_piglit(&server, &xvfb, PIGLIT_PROFILE, limit).unwrap_or_else(|e| panic!("{e}"))
    };
    let reference = {
        let server = Server::start(ServerKind::Reference);
        run_piglit(&server, &xvfb, PIGLIT_PROFILE, limit).unwrap_or_else(|e| panic!("{e}"))
    };

    println!(
        "piglit {PIGLIT_PROFILE}, {kind:?} (under test): {}",
        ours.summary()
    );
    println!(
        "piglit {PIGLIT_PROFILE}, Reference:           {}",
        reference.summary()
    );
    // Tests that pass on the reference but not here, by name.
    let regressions: Vec<String> = reference
        .with_result("pass")
        .into_iter()
        .filter(|t| ours.tests.get(*t).map(String::as_str) != Some("pass"))
        .map(|t| {
            format!(
                "  {t}: {}",
                ours.tests.get(t).map(String::as_str).unwrap_or("missing")
            )
        })
        .collect();
    if !regressions.is_empty() {
        println!("passing on the reference only:\n{}", regressions.join("\n"));
    }
    let not_passing: Vec<String> = ours
        .tests
        .iter()
        .filter(|(_, r)| *r != "pass")
        .map(|(t, r)| format!("  {t}: {r}"))
        .collect();
    let detail = format!(
        "under test ({kind:?}): {}\nreference: {}\nnot passing under test:\n{}\npassing on the reference only:\n{}",
        ours.summary(),
        reference.summary(),
        not_passing.join("\n"),
        regressions.join("\n")
    );

    assert!(
        reference.count("pass") > 0,
        "the reference server passed no piglit {PIGLIT_PROFILE} test: the setup is broken\n{detail}"
    );
    assert!(
        ours.count("pass") >= reference.count("pass"),
        "fewer piglit {PIGLIT_PROFILE} passes than the reference\n{detail}"
    );
    assert!(
        ours.failures() <= reference.failures(),
        "more piglit {PIGLIT_PROFILE} failures than the reference\n{detail}"
    );
}

/// A container with a newer distribution than its host: Mesa 25 clients
/// from the Debian 13 root against vtestd and against this host's
/// reference, in one run. glmark2 (the scenes of `glmark2_short_run_scores`)
/// scores through both, rendering virgl.
#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients)),
    ignore = "needs root, Mesa and the Mesa clients"
)]
fn debian13_guest_glmark2_through_vtestd_and_the_reference() {
    let Some(_) = common::guest::debian13_root() else {
        return;
    };
    let xvfb = Xvfb::start();
    let mut scores = Vec::new();
    for kind in [ServerKind::Vtestd, ServerKind::Reference] {
        let server = Server::start(kind);
        let dir = work_dir("glmark2-debian13");
        let args = [
            "--off-screen",
            "-b",
            "build:duration=2",
            "-b",
            "texture:duration=2",
        ];
        let cmd = guest_command(Guest::Debian13, &server, &xvfb, &dir, "glmark2", &args);
        let out = run_client(cmd, &dir, "glmark2", Duration::from_secs(120));
        assert!(
            out.success(),
            "{}",
            failure("Mesa 25 glmark2 failed", &out, &server, &xvfb)
        );
        let renderer = glmark2_renderer(&out.stdout).unwrap_or_default();
        assert!(
            renderer.contains("virgl") && out.stdout.contains("Mesa 25"),
            "{}",
            failure(
                &format!("not Mesa 25 through virgl: {renderer:?}"),
                &out,
                &server,
                &xvfb
            )
        );
        let score = glmark2_score(&out.stdout).unwrap_or(0);
        assert!(
            score > 0,
            "{}",
            failure("no positive glmark2 score", &out, &server, &xvfb)
        );
        for line in out.stdout.lines().filter(|l| l.contains("FPS:")) {
            println!("Mesa 25 guest, {kind:?}: {}", line.trim());
        }
        scores.push(score);
        let _ = fs::remove_dir_all(&dir);
    }
    println!(
        "Mesa 25 guest glmark2 Score: vtestd {} reference {} (ratio {:.2})",
        scores[0],
        scores[1],
        scores[0] as f64 / scores[1] as f64
    );
}

/// The same guest's piglit `sanity`: vtestd passes at least what this
/// host's reference passes, in one run.
#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients)),
    ignore = "needs root, Mesa and the Mesa clients"
)]
fn debian13_guest_piglit_sanity_matches_reference() {
    let Some(_) = common::guest::debian13_root() else {
        return;
    };
    let limit = Duration::from_secs(300);
    let xvfb = Xvfb::start();
    let run = |kind| {
        let server = Server::start(kind);
        run_piglit_as(&server, &xvfb, PIGLIT_PROFILE, limit, Guest::Debian13)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let ours = run(ServerKind::Vtestd);
    let reference = run(ServerKind::Reference);
    println!(
        "Mesa 25 guest piglit {PIGLIT_PROFILE}, vtestd:    {}",
        ours.summary()
    );
    println!(
        "Mesa 25 guest piglit {PIGLIT_PROFILE}, reference: {}",
        reference.summary()
    );
    let regressions: Vec<&str> = reference
        .with_result("pass")
        .into_iter()
        .filter(|t| ours.tests.get(*t).map(String::as_str) != Some("pass"))
        .collect();
    assert!(
        reference.count("pass") > 0,
        "the reference passed nothing: setup broken"
    );
    assert!(
        regressions.is_empty(),
        "passing on the reference only: {regressions:?}\nvtestd: {}\nreference: {}",
        ours.summary(),
        reference.summary()
    );
}
