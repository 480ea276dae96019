//! TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step of clock skew), the
//! parameters every authenticator app understands.

use totp_rs::{Algorithm, Secret, TOTP};

fn totp(secret_base32: &str) -> Option<TOTP> {
    let bytes = Secret::Encoded(secret_base32.to_owned()).to_bytes().ok()?;
    Some(TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, bytes))
}

/// A fresh 160-bit secret, base32 (what `admin user add --totp` prints for enrolment).
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    match Secret::Raw(bytes.to_vec()).to_encoded() {
        Secret::Encoded(s) => s,
        Secret::Raw(_) => String::new(),
    }
}

/// Whether `code` is the current code (or one step either side) for the secret.
pub fn verify(secret_base32: &str, code: &str) -> bool {
    matching_step(secret_base32, code).is_some()
}

/// The 30-second step whose code `code` is (the current one, or one step either side), so a
/// sign-in can refuse a code whose step was already used.
pub fn matching_step(secret_base32: &str, code: &str) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 {
        return None;
    }
    let totp = totp(secret_base32)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let step = now / 30;
    [step.saturating_sub(1), step, step + 1].into_iter().find(|s| {
        let candidate = totp.generate(s * 30);
        candidate.len() == code.len() && candidate.bytes().zip(code.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

/// The current code (tests and operators).
pub fn current(secret_base32: &str) -> Option<String> {
    totp(secret_base32)?.generate_current().ok()
}

/// The `otpauth://` URI an authenticator app scans.
pub fn provisioning_uri(issuer: &str, username: &str, secret_base32: &str) -> String {
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    format!("otpauth://totp/{}:{}?secret={secret_base32}&issuer={}&algorithm=SHA1&digits=6&period=30", enc(issuer), enc(username), enc(issuer))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_current_code_verifies_and_others_do_not() {
        let secret = super::new_secret();
        let code = super::current(&secret).unwrap();
        assert!(super::verify(&secret, &code));
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert!(!super::verify(&secret, &wrong));
        assert!(!super::verify(&secret, "abc"));
    }
}
