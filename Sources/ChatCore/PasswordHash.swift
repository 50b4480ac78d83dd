import COpenSSL
import Foundation
import Proto

/// scrypt password hashes in PHC string format:
/// `$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt, base64 unpadded>$<key, base64 unpadded>`.
/// Computed with libcrypto's EVP_PBE_scrypt.
public struct PasswordHash: Sendable, Equatable {
    public var logN: Int
    public var r: Int
    public var p: Int
    public var salt: [UInt8]
    public var key: [UInt8]

    public static let defaultLogN = 15
    public static let keyLength = 32

    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    /// Hashes `password` with a fresh 16-byte salt.
    public static func make(password: String, logN: Int = defaultLogN, r: Int = 8, p: Int = 1) throws -> PasswordHash {
        let salt = try Crypto.randomBytes(16)
        let key = try derive(password: password, salt: salt, logN: logN, r: r, p: p, length: keyLength)
        return PasswordHash(logN: logN, r: r, p: p, salt: salt, key: key)
    }

    /// Parses a PHC scrypt string. Anything else (a plain-text password above all) is rejected.
    public init(parsing text: String) throws {
        let parts = text.split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0].isEmpty, parts[1] == "scrypt" else {
            throw Invalid(description: "not a $scrypt$ hash string")
        }
        var params: [String: Int] = [:]
        for kv in parts[2].split(separator: ",") {
            let pair = kv.split(separator: "=", maxSplits: 1)
            guard pair.count == 2, let v = Int(pair[1]) else { throw Invalid(description: "bad scrypt parameters") }
            params[String(pair[0])] = v
        }
        guard let ln = params["ln"], let r = params["r"], let p = params["p"],
              (10...20).contains(ln), (1...32).contains(r), (1...16).contains(p),
              let salt = Crypto.decodeBase64NoPad(String(parts[3])), salt.count >= 8,
              let key = Crypto.decodeBase64NoPad(String(parts[4])), key.count >= 16
        else { throw Invalid(description: "bad scrypt parameters, salt or key") }
        self.init(logN: ln, r: r, p: p, salt: salt, key: key)
    }

    public init(logN: Int, r: Int, p: Int, salt: [UInt8], key: [UInt8]) {
        self.logN = logN
        self.r = r
        self.p = p
        self.salt = salt
        self.key = key
    }

    public var string: String {
        "$scrypt$ln=\(logN),r=\(r),p=\(p)$\(Crypto.base64NoPad(salt))$\(Crypto.base64NoPad(key))"
    }

    /// True when `password` derives the same key; the comparison is constant-time.
    public func verify(password: String) -> Bool {
        guard let derived = try? Self.derive(password: password, salt: salt, logN: logN, r: r, p: p, length: key.count) else {
            return false
        }
        return Crypto.constantTimeEqual(derived, key)
    }

    static func derive(password: String, salt: [UInt8], logN: Int, r: Int, p: Int, length: Int) throws -> [UInt8] {
        let pass = Array(password.utf8)
        var out = [UInt8](repeating: 0, count: length)
        // 128 * r * N bytes of work memory, plus headroom; OpenSSL's default cap (32 MiB) is too small for N=2^15, r=8.
        let maxmem = UInt64(128 * r * (1 << logN) * (p + 1) + (1 << 20))
        let rc = pass.withUnsafeBufferPointer { pw in
            salt.withUnsafeBufferPointer { s in
                out.withUnsafeMutableBufferPointer { o in
                    pw.withMemoryRebound(to: CChar.self) { pwc in
                        EVP_PBE_scrypt(pwc.baseAddress, pw.count, s.baseAddress, s.count,
                                       UInt64(1) << UInt64(logN), UInt64(r), UInt64(p), maxmem, o.baseAddress, length)
                    }
                }
            }
        }
        guard rc == 1 else { throw Invalid(description: "scrypt failed") }
        return out
    }
}

/// The users file: a JSON object of user name → scrypt hash string.
public struct UsersFile: Sendable {
    public var users: [String: PasswordHash]

    /// The one rule for user names, shared with the wire contract's (dm ids, invites).
    public static func isValidName(_ name: String) -> Bool { RoomID.isValidUser(name) }

    public init(users: [String: PasswordHash] = [:]) {
        self.users = users
    }

    /// Loads and validates the file; an entry that is not a scrypt hash string is an error, never a password.
    public init(path: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw PasswordHash.Invalid(description: "\(path): not a JSON object")
        }
        var users: [String: PasswordHash] = [:]
        for (name, value) in object {
            guard Self.isValidName(name) else { throw PasswordHash.Invalid(description: "\(path): invalid user name '\(name)'") }
            guard let s = value as? String, let h = try? PasswordHash(parsing: s) else {
                throw PasswordHash.Invalid(description: "\(path): the entry for '\(name)' is not a $scrypt$ hash string")
            }
            users[name] = h
        }
        self.users = users
    }

    /// The accounts the repository's users.json ships for the demo, with their published passwords.
    public static let demoAccounts = ["admin": "password123", "team_member": "securechat456"]

    /// Names in this file that still have their published demo password (one scrypt per demo
    /// name present, so only at start-up).
    public func demoAccountsPresent() -> [String] {
        Self.demoAccounts.keys.sorted().filter { name in
            users[name].map { $0.verify(password: Self.demoAccounts[name]!) } ?? false
        }
    }

    /// Refuses a file with demo accounts unless this is a demo (`--allow-demo-users`).
    public static func checkDemoAccounts(in file: UsersFile, path: String, allowed: Bool) throws -> [String] {
        let demo = file.demoAccountsPresent()
        if !demo.isEmpty && !allowed {
            throw Options.Invalid("\(path) holds demo accounts with their published passwords (\(demo.joined(separator: ", "))): "
                + "remove them (securechat users remove NAME) or change their passwords (securechat users passwd NAME); "
                + "--allow-demo-users runs it anyway, as a demo")
        }
        return demo
    }

    /// Writes the file atomically with mode 0600, names sorted.
    public func write(path: String) throws {
        var out = "{\n"
        let names = users.keys.sorted()
        for (i, name) in names.enumerated() {
            out += "  \(JSONText.string(name)): \(JSONText.string(users[name]!.string))"
            out += i + 1 < names.count ? ",\n" : "\n"
        }
        out += "}\n"
        let tmp = path + ".tmp"
        try Data(out.utf8).write(to: URL(fileURLWithPath: tmp))
        chmod(tmp, 0o600)
        guard rename(tmp, path) == 0 else { throw PasswordHash.Invalid(description: "cannot replace \(path)") }
    }
}
