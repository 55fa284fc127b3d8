package backend

// ValidJSON reports whether data is one valid JSON value, as json.Valid
// does (invalid UTF-8 inside strings included, nesting at most 10000
// deep), in one recursive pass: json.Valid's byte-by-byte state machine
// cost as much as decoding a whole completion (FuzzValidAgrees proves the
// two agree). Backends check upstream bodies with it.
func ValidJSON(data []byte) bool {
	i := validValue(data, skipSpace(data, 0), 0)
	return i >= 0 && skipSpace(data, i) == len(data)
}

// EachMember calls member with the name (between its quotes, escapes
// left as they are) and the value of each member of obj, in order, while
// checking obj as ValidJSON does; it reports whether obj is one valid JSON
// object, and false as soon as member does. It lets a caller read a few
// fields of a reply in one pass without decoding it.
func EachMember(obj []byte, member func(name, value []byte) bool) bool {
	i := skipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return false
	}
	if i = skipSpace(obj, i+1); i < len(obj) && obj[i] == '}' {
		return skipSpace(obj, i+1) == len(obj)
	}
	for {
		if i >= len(obj) || obj[i] != '"' {
			return false
		}
		end := validString(obj, i)
		if end < 0 {
			return false
		}
		name := obj[i+1 : end-1]
		if i = skipSpace(obj, end); i >= len(obj) || obj[i] != ':' {
			return false
		}
		start := skipSpace(obj, i+1)
		if i = validValue(obj, start, 1); i < 0 {
			return false
		}
		if !member(name, obj[start:i:i]) {
			return false
		}
		if i = skipSpace(obj, i); i >= len(obj) {
			return false
		}
		switch obj[i] {
		case '}':
			return skipSpace(obj, i+1) == len(obj)
		case ',':
			i = skipSpace(obj, i+1)
		default:
			return false
		}
	}
}

// maxDepth is encoding/json's limit on nesting.
const maxDepth = 10000

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// validValue returns the end of the valid value that starts at data[i], or
// -1.
func validValue(data []byte, i, depth int) int {
	if i >= len(data) {
		return -1
	}
	switch c := data[i]; {
	case c == '{':
		if depth++; depth > maxDepth {
			return -1
		}
		i = skipSpace(data, i+1)
		if i < len(data) && data[i] == '}' {
			return i + 1
		}
		for {
			if i >= len(data) || data[i] != '"' {
				return -1
			}
			if i = validString(data, i); i < 0 {
				return -1
			}
			if i = skipSpace(data, i); i >= len(data) || data[i] != ':' {
				return -1
			}
			if i = validValue(data, skipSpace(data, i+1), depth); i < 0 {
				return -1
			}
			if i = skipSpace(data, i); i >= len(data) {
				return -1
			}
			switch data[i] {
			case '}':
				return i + 1
			case ',':
				i = skipSpace(data, i+1)
			default:
				return -1
			}
		}
	case c == '[':
		if depth++; depth > maxDepth {
			return -1
		}
		i = skipSpace(data, i+1)
		if i < len(data) && data[i] == ']' {
			return i + 1
		}
		for {
			if i = validValue(data, i, depth); i < 0 {
				return -1
			}
			if i = skipSpace(data, i); i >= len(data) {
				return -1
			}
			switch data[i] {
			case ']':
				return i + 1
			case ',':
				i = skipSpace(data, i+1)
			default:
				return -1
			}
		}
	case c == '"':
		return validString(data, i)
	case c == '-' || c >= '0' && c <= '9':
		return validNumber(data, i)
	case c == 't':
		return validLiteral(data, i, "true")
	case c == 'f':
		return validLiteral(data, i, "false")
	case c == 'n':
		return validLiteral(data, i, "null")
	}
	return -1
}

func validLiteral(data []byte, i int, lit string) int {
	if len(data)-i < len(lit) || string(data[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

// validString returns the end of the string that starts at data[i] ('"').
func validString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch c := data[i]; {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		case c == '\\':
			if i++; i >= len(data) {
				return -1
			}
			switch data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(data)-i <= 4 {
					return -1
				}
				for _, h := range data[i+1 : i+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return -1
					}
				}
				i += 4
			default:
				return -1
			}
		}
	}
	return -1
}

// validNumber returns the end of the number that starts at data[i].
func validNumber(data []byte, i int) int {
	if data[i] == '-' {
		i++
	}
	digits := func() bool {
		start := i
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		return i > start
	}
	switch {
	case i >= len(data):
		return -1
	case data[i] == '0':
		i++
	case !digits():
		return -1
	}
	if i < len(data) && data[i] == '.' {
		i++
		if !digits() {
			return -1
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if !digits() {
			return -1
		}
	}
	return i
}
