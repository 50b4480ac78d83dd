import Foundation
import NIOCore

/// The web client's files, read once at start-up and served from memory.
/// Only names found in the folder itself can ever be served, so no request
/// path, encoded or not, reaches outside it.
struct StaticFiles: Sendable {
    struct File: Sendable {
        let contentType: String
        let body: ByteBuffer
    }

    private let files: [String: File]

    static let contentTypes = [
        "html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
        "svg": "image/svg+xml", "png": "image/png", "ico": "image/x-icon", "json": "application/json", "txt": "text/plain; charset=utf-8",
    ]

    init(directory: String) throws {
        var files: [String: File] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) where !name.hasPrefix(".") {
            let ext = (name as NSString).pathExtension.lowercased()
            guard let type = Self.contentTypes[ext] else { continue }
            let data = try Data(contentsOf: URL(fileURLWithPath: directory).appendingPathComponent(name))
            files[name] = File(contentType: type, body: ByteBuffer(bytes: data))
        }
        self.files = files
    }

    /// The file for a request path's last segment, if the folder holds exactly that name.
    func file(named raw: Substring) -> File? {
        guard !raw.contains("/"), !raw.contains("%"), !raw.contains("\\"), raw != "..", raw != "." else { return nil }
        return files[String(raw)]
    }

    func page(_ name: String) -> File? { files[name] }
}
