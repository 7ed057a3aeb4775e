//! `servicelog-receiver [PORT]`: the HTTP receiver the tests on the node run as a pod (image
//! `servicelog.test/receiver:1`, see `e2e/tools/images/receiver-image.sh`). It takes every
//! POST with 200 and prints its body to stdout, one line per line of the body, so a test
//! reads what a sink delivered with `kubectl logs`. Standard library only: the image holds
//! this binary and the C libraries it links, nothing else (Debian's static busybox `wget`
//! crashes on the node, and busybox `httpd` has no plain way to keep a POST body).
//! Bodies sent with `Content-Encoding` (gzip) are answered 415: the tests send plain ones.
#![forbid(unsafe_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    thread,
};

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    eprintln!("servicelog-receiver: listening on 0.0.0.0:{port}");
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                thread::spawn(move || {
                    if let Err(e) = serve(stream) {
                        eprintln!("servicelog-receiver: connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("servicelog-receiver: accept: {e}"),
        }
    }
    Ok(())
}

/// Answers the requests of one keep-alive connection until the client closes it.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        let mut encoded = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-encoding" => encoded = !value.trim().eq_ignore_ascii_case("identity"),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let status = if encoded {
            "415 Unsupported Media Type"
        } else {
            let text = String::from_utf8_lossy(&body);
            let mut out = std::io::stdout().lock();
            for line in text.lines().filter(|l| !l.is_empty()) {
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            "200 OK"
        };
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        )?;
        writer.flush()?;
    }
}
