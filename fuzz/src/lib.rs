//! What the fuzz targets share: the HTTP-answer framing of `secret_response`
//! and `sts_response`, and the secret rotation of the secrets oracles
//! (`sts_response`, `imds_json`).

use aws_vault::aws::HttpResponse;

/// A whole HTTP answer, written like HTTP:
///
/// ```text
/// <status>\n
/// <name>: <value>\n      (any number of header lines)
/// \n
/// <body bytes>
/// ```
///
/// A first line that is not a number makes the status the first two bytes
/// (little-endian) and everything after them the body, so raw bytes still
/// reach both the success and the error paths.
pub fn http_response(data: &[u8]) -> HttpResponse {
    let line_end = data.iter().position(|&b| b == b'\n');
    let status = line_end
        .and_then(|i| std::str::from_utf8(&data[..i]).ok())
        .and_then(|l| l.trim().parse::<u16>().ok());
    let Some(status) = status else {
        let status = match data {
            [a, b, ..] => u16::from_le_bytes([*a, *b]),
            _ => 200,
        };
        return HttpResponse {
            status,
            headers: Vec::new(),
            body: data.get(2..).unwrap_or_default().to_vec(),
        };
    };
    let mut rest = &data[line_end.unwrap_or(0) + 1..];
    let mut headers = Vec::new();
    loop {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        if line.is_empty() || line == b"\r" {
            break;
        }
        let line = String::from_utf8_lossy(line);
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    HttpResponse {
        status,
        headers,
        body: rest.to_vec(),
    }
}

/// Letters and digits moved one step within their class; everything else kept
/// (a secret of the same length and validity, for differential oracles).
pub fn rotate(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            'a'..='y' | 'A'..='Y' | '0'..='8' => char::from(c as u8 + 1),
            c => c,
        })
        .collect()
}
