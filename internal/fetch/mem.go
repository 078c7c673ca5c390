package fetch

import (
	"container/list"
	"sync"
)

// memCache keeps recently decoded chunks, least recently used first out,
// so that reads smaller than a chunk find it without the store.
type memCache struct {
	mu    sync.Mutex
	max   int64
	size  int64
	lru   list.List // of *memEntry, most recent at the front
	items map[memKey]*list.Element
}

type memKey struct {
	l  *Layer
	ci int
}

type memEntry struct {
	key memKey
	b   []byte
}

func newMemCache(max int64) *memCache {
	return &memCache{max: max, items: make(map[memKey]*list.Element)}
}

func (c *memCache) get(l *Layer, ci int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[memKey{l, ci}]
	if !ok {
		return nil
	}
	c.lru.MoveToFront(e)
	return e.Value.(*memEntry).b
}

func (c *memCache) has(l *Layer, ci int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.items[memKey{l, ci}]
	return ok
}

func (c *memCache) put(l *Layer, ci int, b []byte) {
	if int64(len(b)) > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := memKey{l, ci}
	if e, ok := c.items[k]; ok {
		c.lru.MoveToFront(e)
		return
	}
	c.items[k] = c.lru.PushFront(&memEntry{key: k, b: b})
	c.size += int64(len(b))
	for c.size > c.max {
		e := c.lru.Back()
		me := e.Value.(*memEntry)
		c.lru.Remove(e)
		delete(c.items, me.key)
		c.size -= int64(len(me.b))
	}
}

// drop forgets every chunk of l.
func (c *memCache) drop(l *Layer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := c.lru.Front(); e != nil; {
		next := e.Next()
		if me := e.Value.(*memEntry); me.key.l == l {
			c.lru.Remove(e)
			delete(c.items, me.key)
			c.size -= int64(len(me.b))
		}
		e = next
	}
}
