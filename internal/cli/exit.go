package cli

// ExitError asks main to exit with Code, printing Err if it is not nil;
// `batchd wait` uses it to exit 2 when a batch ended with any request that
// did not succeed.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return "exit status"
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }
