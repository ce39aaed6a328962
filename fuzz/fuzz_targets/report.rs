//! A host's report envelope as `nixcast serve --accept-reports` receives it
//! (arbitrary bytes for host `web`: size and signature-count bounds, the
//! verification, the clear header of a sealed report, its order, the times
//! checked), and a payload behind a valid signature: bytes that parse as a
//! report are signed plain and sealed with the fuzz host key, and must come
//! back from verifying and opening as they were signed.
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use nixcast_common::report::{self, Report, Signed};
use nixcast_common::seal::Identity;
use nixcast_fuzz::{FUZZ_KEY, HOST_KEY};

fuzz_target!(|data: &[u8]| {
    let keys = [HOST_KEY.public()];
    let operator = Identity::of_publisher(&FUZZ_KEY);
    let now = SystemTime::now();

    if let Ok(signed) = report::verify(data, "web", &keys) {
        let order = signed.order();
        if let Signed::Plain(r) = &signed {
            assert_eq!(order, Some(r.order()));
            let _ = r.check_times(now, None);
        }
        if let Some(o) = order {
            let _ = report::check_at(o.at, now);
        }
        if let Ok(r) = signed.open("web", std::slice::from_ref(&operator)) {
            assert_eq!(r.host, "web");
        }
    }

    let Ok(r) = serde_json::from_slice::<Report>(data) else {
        return;
    };
    let _ = r.check_times(now, Some(r.at));
    for sealed in [false, true] {
        let to = if sealed { vec![operator.recipient()] } else { vec![] };
        let env = r.sign(&HOST_KEY, &to).expect("a report signs");
        match report::verify(&env, &r.host, &keys) {
            Ok(signed) => {
                assert_eq!(signed.order(), Some(r.order()));
                let opened = signed
                    .open(&r.host, std::slice::from_ref(&operator))
                    .expect("a report signed and sealed here opens");
                assert_eq!(opened, r);
            }
            Err(report::ReportError::TooLarge(_)) => {}
            Err(e) => panic!("a signed report was refused: {e}"),
        }
    }
});
