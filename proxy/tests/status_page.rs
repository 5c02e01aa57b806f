//! The status page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! scripts/test.sh) loads the admin listener's `/status` from the real binary, runs its script,
//! and the test reads what it rendered (the DOM after the script) and keeps a screenshot.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use gemini_proxy_tests::process::temp_dir;
use gemini_proxy_tests::{Behaviour, Client, MockGemini, ProxyProcess, Quota};
use http::Method;
use keystore::KeyId;

const BIN: &str = env!("CARGO_BIN_EXE_gemini-proxy");
const MODEL_PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

fn chromium() -> String {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{bin} is needed for this test (Debian's chromium package; scripts/test.sh installs it)"
    );
    bin
}

/// Runs headless Chromium on `url` with `extra` arguments; its standard output.
fn headless(url: &str, extra: &[&str]) -> String {
    let profile = temp_dir("chromium");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_status_page_shows_states_reasons_countdowns_and_usage() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    mock.key("page-dead", Behaviour::Invalid);
    mock.key(
        "page-cool",
        Behaviour::Quota {
            quota: Quota::RequestsPerMinute,
            retry_delay: Some("50s"),
        },
    );
    // A group name with markup in it: the page must show it as text.
    let config = format!(
        "groups:\n  - name: \"team<b>bold</b>\"\n    upstream: {{url: \"{}\"}}\n    access: {{mode: Open}}\n    keys: [{{value: page-ok, project: proj-a}}, {{value: page-dead, project: proj-a}}, {{value: page-cool, project: proj-b}}]\ndefaultGroup: \"team<b>bold</b>\"\n",
        mock.url()
    );
    let p = ProxyProcess::with_config(BIN, &config, &[]).await;
    let c = Client::new();
    for _ in 0..5 {
        let r = c
            .call(Method::POST, &format!("{}{MODEL_PATH}", p.url()), &[], "{}")
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Usage reaches the store every 500 ms.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let url = format!("{}/status", p.admin_url());

    let dom = tokio::task::spawn_blocking(move || headless(&url, &["--dump-dom"]))
        .await
        .expect("chromium task");
    // The script ran and rendered the group, as text.
    assert!(
        dom.contains("data-group="),
        "the page did not render:\n{dom}"
    );
    assert!(dom.contains("team&lt;b&gt;bold&lt;/b&gt;"), "{dom}");
    assert!(
        !dom.contains("<b>bold</b>"),
        "markup from a name was rendered:\n{dom}"
    );
    assert!(dom.contains("source "), "{dom}");
    for (key, state) in [
        ("page-ok", "Active"),
        ("page-dead", "Invalid"),
        ("page-cool", "CoolingDown"),
    ] {
        let id = KeyId::of(key);
        let row = dom
            .split("<tr")
            .find(|r| r.contains(&format!("data-key=\"{id}\"")))
            .unwrap_or_else(|| panic!("no row for {key} ({id}):\n{dom}"));
        assert!(row.contains(&format!(">{state}<")), "{key}: {row}");
        assert!(!dom.contains(key), "a key value on the page");
    }
    let cool = KeyId::of("page-cool");
    let row = dom
        .split("<tr")
        .find(|r| r.contains(&format!("data-key=\"{cool}\"")))
        .expect("cooling row");
    assert!(row.contains("PerMinuteQuota"), "{row}");
    // The countdown: under 50 s and counting.
    let ends = row
        .split("data-until=")
        .nth(1)
        .and_then(|r| r.split('>').nth(1))
        .and_then(|r| r.split('<').next())
        .unwrap_or_else(|| panic!("no countdown in {row}"));
    let secs: u64 = ends
        .trim_end_matches(" s")
        .parse()
        .unwrap_or_else(|_| panic!("countdown {ends:?}"));
    assert!((1..=50).contains(&secs), "{ends}");
    // The usage chart: 60 minutes, and the requests counted per key and project.
    let chart = dom
        .split("data-chart=\"minutes\"")
        .nth(1)
        .and_then(|c| c.split("</svg>").next())
        .expect("minutes chart");
    assert_eq!(chart.matches("<rect").count(), 60, "{chart}");
    assert!(dom.contains("data-usage=\"project\""), "{dom}");
    let ok = KeyId::of("page-ok");
    let ok_row = dom
        .split("<tr")
        .find(|r| r.contains(&format!("data-key=\"{ok}\"")))
        .expect("ok row");
    assert!(
        ok_row.contains(">4<") || ok_row.contains(">5<"),
        "requests of page-ok: {ok_row}"
    );

    // And a picture of it, kept for people (target/status-page.png).
    let shot: PathBuf = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    let url = format!("{}/status", p.admin_url());
    tokio::task::spawn_blocking(move || headless(&url, &[&arg, "--window-size=1280,900"]))
        .await
        .expect("chromium task");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 20_000,
        "a {} byte screenshot is blank",
        png.len()
    );
}
