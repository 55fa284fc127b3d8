package postgres

import "context"

// BackendPIDs lists the server pids of the pool's idle connections, for
// tests that kill them.
func (s *Store) BackendPIDs(ctx context.Context) ([]uint32, error) {
	var pids []uint32
	for _, c := range s.pool.AcquireAllIdle(ctx) {
		pids = append(pids, c.Conn().PgConn().PID())
		c.Release()
	}
	return pids, nil
}
