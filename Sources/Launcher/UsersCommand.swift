import ChatCore
import Foundation

/// `securechat users add|passwd|remove|list NAME`: edits users.json.
struct UsersCommand {
    let options: Options

    func execute() throws {
        try options.refuseUnknown(["users-file", "log-n"], positionalLimit: 4)
        let path = options.string("users-file", default: "users.json")
        let args = Array(options.positional.dropFirst(2))
        guard let verb = options.positional.dropFirst().first else { throw Options.Invalid(Launcher.usage) }
        var file = FileManager.default.fileExists(atPath: path) ? try UsersFile(path: path) : UsersFile()
        switch verb {
        case "list":
            for name in file.users.keys.sorted() { print(name) }
            return
        case "add", "passwd":
            guard let name = args.first else { throw Options.Invalid("usage: securechat users \(verb) NAME") }
            guard UsersFile.isValidName(name) else { throw Options.Invalid("user names are 1-32 of A-Z a-z 0-9 _ - .") }
            if verb == "add", file.users[name] != nil { throw Options.Invalid("\(name) exists; use passwd") }
            if verb == "passwd", file.users[name] == nil { throw Options.Invalid("no user \(name)") }
            let password = try readPassword()
            guard (8...1024).contains(password.utf8.count) else { throw Options.Invalid("passwords are 8 to 1024 bytes") }
            file.users[name] = try PasswordHash.make(password: password)
        case "add-many":
            // For benchmarks: PREFIX COUNT, one password (stdin) for all, names PREFIX0..PREFIX<COUNT-1>.
            guard args.count == 2, let count = Int(args[1]), (1...100_000).contains(count) else {
                throw Options.Invalid("usage: securechat users add-many PREFIX COUNT [--log-n 10...20]")
            }
            let logN = try options.int("log-n", default: PasswordHash.defaultLogN)
            let password = try readPassword()
            for i in 0..<count {
                let name = "\(args[0])\(i)"
                guard UsersFile.isValidName(name) else { throw Options.Invalid("invalid name \(name)") }
                file.users[name] = try PasswordHash.make(password: password, logN: logN)
            }
        case "remove":
            guard let name = args.first else { throw Options.Invalid("usage: securechat users remove NAME") }
            guard file.users.removeValue(forKey: name) != nil else { throw Options.Invalid("no user \(name)") }
        default:
            throw Options.Invalid(Launcher.usage)
        }
        try file.write(path: path)
        print("\(path) updated")
    }

    /// From the terminal without echo (asked twice), or one line from stdin for scripts.
    private func readPassword() throws -> String {
        guard isatty(STDIN_FILENO) == 1 else {
            guard let line = readLine(strippingNewline: true) else { throw Options.Invalid("no password on stdin") }
            return line
        }
        let first = try prompt("Password: ")
        let second = try prompt("Again: ")
        guard first == second else { throw Options.Invalid("passwords differ") }
        return first
    }

    private func prompt(_ text: String) throws -> String {
        FileHandle.standardError.write(Data(text.utf8))
        var old = termios()
        tcgetattr(STDIN_FILENO, &old)
        var silent = old
        silent.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(STDIN_FILENO, TCSANOW, &silent)
        defer {
            tcsetattr(STDIN_FILENO, TCSANOW, &old)
            FileHandle.standardError.write(Data("\n".utf8))
        }
        guard let line = readLine(strippingNewline: true) else { throw Options.Invalid("no password given") }
        return line
    }
}
