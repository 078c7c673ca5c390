package cache

// entry is one object in the index.
type entry struct {
	key  key
	size int64
	// verified is true once the file's content has been checked against
	// key in this process (written by Put, or hashed on first use).
	verified bool
	// stamp is the file's last known use time (unix nanoseconds) on disk.
	stamp      int64
	prev, next *entry
}

// lru is an intrusive doubly linked list of entries, most recently used at
// the front. The zero value is an empty list.
type lru struct {
	root entry // root.next is the front, root.prev the back
	n    int
}

func (l *lru) lazyInit() {
	if l.root.next == nil {
		l.root.next = &l.root
		l.root.prev = &l.root
	}
}

// pushFront inserts e, which must not be in the list, at the front.
func (l *lru) pushFront(e *entry) {
	l.lazyInit()
	e.prev = &l.root
	e.next = l.root.next
	e.next.prev = e
	l.root.next = e
	l.n++
}

// remove removes e, which must be in the list.
func (l *lru) remove(e *entry) {
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
	l.n--
}

// moveToFront moves e, which must be in the list, to the front.
func (l *lru) moveToFront(e *entry) {
	if l.root.next == e {
		return
	}
	l.remove(e)
	l.pushFront(e)
}

// back returns the least recently used entry, or nil.
func (l *lru) back() *entry {
	if l.n == 0 {
		return nil
	}
	return l.root.prev
}

// len returns the number of entries.
func (l *lru) len() int { return l.n }
