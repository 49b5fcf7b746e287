// The seed's billing checkout, re-created from ../shared/reference/seed-billing-spec.md (not
// from the seed's source) as the benchmark's baseline over HTTP: net/http, the §1.2 JWT check
// (HS256/384/512 with the raw JWT_SECRET), the §3 schema created at start, get-or-create
// customer, the §4.5 redemption transaction, the §5.2 credit-only checkout transaction, and
// E12 POST /billing/vouchers/issue (§4.1 upsert) so the bench issues vouchers the same way on
// both sides.
//
// Built by the bench in GOPATH mode with Debian's packages (no module proxy here):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o seed-server ./bench/seed
//
// Not reproduced (no effect on a credit-only checkout of the free plan): the catalog is read
// once from CATALOG_FILE (the seed fetches {CATALOG_URL}/catalog/plans over HTTP on every
// checkout), there is no Redpanda producer (the seed's dispatchOrderPlaced with a nil producer
// is a no-op, and so it is here), the Stripe path stops at its settings check (503 when no
// secret key is configured, as the seed does), and the other endpoints are absent.
// Deviations of the libraries: Debian packages golang-jwt v4 (the seed used v5.2.1): v4 also
// refuses an "iat" in the future; exp and nbf are checked only when present in both.
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt"
	_ "github.com/lib/pq"
	"gopkg.in/yaml.v3"
)

// §3, in the order store.Migrate runs them.
var migrations = []string{
	`CREATE TABLE IF NOT EXISTS customers (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id TEXT UNIQUE NOT NULL,
  tenant_id TEXT NOT NULL,
  stripe_customer_id TEXT UNIQUE,
  email TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
	`CREATE TABLE IF NOT EXISTS subscriptions (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id UUID NOT NULL REFERENCES customers(id),
  tenant_id TEXT NOT NULL,
  stripe_subscription_id TEXT UNIQUE,
  plan_id TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'active',
  current_period_start TIMESTAMPTZ, current_period_end TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
	`CREATE TABLE IF NOT EXISTS orders (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id UUID NOT NULL REFERENCES customers(id),
  tenant_id TEXT NOT NULL, plan_id TEXT NOT NULL,
  apps JSONB NOT NULL DEFAULT '[]', addons JSONB NOT NULL DEFAULT '[]',
  amount_omr INT NOT NULL,
  amount_baisa BIGINT NOT NULL DEFAULT 0,
  status TEXT NOT NULL DEFAULT 'pending',
  stripe_session_id TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
	`ALTER TABLE orders ADD COLUMN IF NOT EXISTS amount_baisa BIGINT NOT NULL DEFAULT 0`,
	`UPDATE orders SET amount_baisa = amount_omr * 1000 WHERE amount_baisa = 0 AND amount_omr > 0`,
	`ALTER TABLE orders ADD COLUMN IF NOT EXISTS promo_code TEXT`,
	`CREATE TABLE IF NOT EXISTS invoices (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id UUID NOT NULL REFERENCES customers(id),
  tenant_id TEXT NOT NULL,
  stripe_invoice_id TEXT UNIQUE,
  amount_omr INT NOT NULL, amount_baisa BIGINT NOT NULL DEFAULT 0,
  currency TEXT NOT NULL DEFAULT 'omr',
  status TEXT NOT NULL DEFAULT 'draft',
  period_start TIMESTAMPTZ, period_end TIMESTAMPTZ, pdf_url TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
	`ALTER TABLE invoices ADD COLUMN IF NOT EXISTS amount_baisa BIGINT NOT NULL DEFAULT 0`,
	`ALTER TABLE invoices ADD COLUMN IF NOT EXISTS currency TEXT NOT NULL DEFAULT 'omr'`,
	`UPDATE invoices SET amount_baisa = amount_omr WHERE amount_baisa = 0 AND amount_omr > 0`,
	`CREATE TABLE IF NOT EXISTS stripe_webhook_events (
  event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL DEFAULT '',
  processed_at TIMESTAMPTZ NOT NULL DEFAULT now(), status TEXT NOT NULL DEFAULT 'processed')`,
	`CREATE TABLE IF NOT EXISTS settings (
  id INT PRIMARY KEY DEFAULT 1,
  stripe_secret_key TEXT NOT NULL DEFAULT '', stripe_webhook_secret TEXT NOT NULL DEFAULT '',
  stripe_public_key TEXT NOT NULL DEFAULT '', updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT settings_single_row CHECK (id = 1))`,
	`INSERT INTO settings (id) VALUES (1) ON CONFLICT (id) DO NOTHING`,
	`CREATE TABLE IF NOT EXISTS promo_codes (
  code TEXT PRIMARY KEY,
  credit_omr INT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  active BOOLEAN NOT NULL DEFAULT true,
  max_redemptions INT NOT NULL DEFAULT 0,
  times_redeemed INT NOT NULL DEFAULT 0,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
	`ALTER TABLE promo_codes ADD COLUMN IF NOT EXISTS deleted_at TIMESTAMPTZ`,
	`CREATE TABLE IF NOT EXISTS credit_ledger (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id UUID NOT NULL REFERENCES customers(id),
  amount_omr INT NOT NULL,
  reason TEXT NOT NULL,
  order_id TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
	`ALTER TABLE credit_ledger ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'active'`,
	`CREATE TABLE IF NOT EXISTS promo_redemptions (
  customer_id UUID NOT NULL REFERENCES customers(id),
  code TEXT NOT NULL REFERENCES promo_codes(code),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (customer_id, code))`,
}

// ------------------------------------------------------------------------------ store

type Customer struct {
	ID       string
	UserID   string
	TenantID string
	Email    string
}

type Store struct{ db *sql.DB }

func (s *Store) Migrate(ctx context.Context) error {
	for _, stmt := range migrations {
		if _, err := s.db.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("store: migrate: %w", err)
		}
	}
	return nil
}

func (s *Store) GetCustomerByUserID(ctx context.Context, userID string) (*Customer, error) {
	c := &Customer{}
	err := s.db.QueryRowContext(ctx,
		`SELECT id, user_id, tenant_id, email FROM customers WHERE user_id=$1`, userID,
	).Scan(&c.ID, &c.UserID, &c.TenantID, &c.Email)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (s *Store) CreateCustomer(ctx context.Context, c *Customer) error {
	return s.db.QueryRowContext(ctx,
		`INSERT INTO customers (user_id, tenant_id, email) VALUES ($1,$2,$3) RETURNING id`,
		c.UserID, c.TenantID, c.Email,
	).Scan(&c.ID)
}

var (
	errPromoNotFound = errors.New("promo code not found")
	errPromoInactive = errors.New("promo code is not active")
	errPromoCap      = errors.New("promo code has reached its redemption limit")
	errPromoRedeemed = errors.New("promo code already redeemed by this customer")
)

// RedeemPromoCode is §4.5: one READ COMMITTED transaction, the promo row locked.
func (s *Store) RedeemPromoCode(ctx context.Context, customerID, code string) (int, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("store: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var (
		credit, maxRedemptions, timesRedeemed int
		active                                bool
		deletedAt                             sql.NullTime
	)
	err = tx.QueryRowContext(ctx,
		`SELECT credit_omr, active, max_redemptions, times_redeemed, deleted_at
		 FROM promo_codes WHERE code=$1 FOR UPDATE`, code,
	).Scan(&credit, &active, &maxRedemptions, &timesRedeemed, &deletedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, errPromoNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("store: lock promo: %w", err)
	}
	if deletedAt.Valid {
		return 0, errPromoNotFound
	}
	if !active {
		return 0, errPromoInactive
	}
	if maxRedemptions > 0 && timesRedeemed >= maxRedemptions {
		return 0, errPromoCap
	}
	var count int
	if err := tx.QueryRowContext(ctx,
		`SELECT COUNT(*) FROM promo_redemptions WHERE customer_id=$1 AND code=$2`,
		customerID, code,
	).Scan(&count); err != nil {
		return 0, fmt.Errorf("store: count redemptions: %w", err)
	}
	if count > 0 {
		return 0, errPromoRedeemed
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO promo_redemptions (customer_id, code) VALUES ($1,$2)`, customerID, code,
	); err != nil {
		return 0, fmt.Errorf("store: record redemption: %w", err)
	}
	if _, err := tx.ExecContext(ctx,
		`UPDATE promo_codes SET times_redeemed = times_redeemed + 1 WHERE code=$1`, code,
	); err != nil {
		return 0, fmt.Errorf("store: increment redemptions: %w", err)
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO credit_ledger (customer_id, amount_omr, reason) VALUES ($1, $2, $3)`,
		customerID, credit, "promo:"+code,
	); err != nil {
		return 0, fmt.Errorf("store: grant credit: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("store: commit: %w", err)
	}
	return credit, nil
}

func (s *Store) GetCreditBalance(ctx context.Context, customerID string) (int, error) {
	var balance int
	err := s.db.QueryRowContext(ctx,
		`SELECT COALESCE(SUM(amount_omr),0) FROM credit_ledger WHERE customer_id=$1`, customerID,
	).Scan(&balance)
	return balance, err
}

type Order struct {
	ID         string
	CustomerID string
	TenantID   string
	PlanID     string
	Apps       []string
	Addons     []string
	AmountOMR  int
	PromoCode  string
}

func jsonArray(items []string) string {
	if items == nil {
		items = []string{}
	}
	b, _ := json.Marshal(items)
	return string(b)
}

// CreditOnlyCheckout is §5.2 step 6: order (completed), spend, subscription in one transaction.
func (s *Store) CreditOnlyCheckout(ctx context.Context, o *Order) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var promo sql.NullString
	if o.PromoCode != "" {
		promo = sql.NullString{String: o.PromoCode, Valid: true}
	}
	if err := tx.QueryRowContext(ctx,
		`INSERT INTO orders (customer_id, tenant_id, plan_id, apps, addons, amount_omr,
		 amount_baisa, status, stripe_session_id, promo_code)
		 VALUES ($1,$2,$3,$4,$5,$6,$7,'completed',NULL,$8) RETURNING id`,
		o.CustomerID, o.TenantID, o.PlanID, jsonArray(o.Apps), jsonArray(o.Addons),
		o.AmountOMR, int64(o.AmountOMR)*1000, promo,
	).Scan(&o.ID); err != nil {
		return err
	}
	if o.AmountOMR > 0 {
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO credit_ledger (customer_id, amount_omr, reason, order_id)
			 VALUES ($1,$2,'order-payment',$3)`,
			o.CustomerID, -o.AmountOMR, o.ID,
		); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO subscriptions (customer_id, tenant_id, stripe_subscription_id, plan_id,
		 status, current_period_start, current_period_end)
		 VALUES ($1,$2,NULL,$3,'active',NULL,NULL)`,
		o.CustomerID, o.TenantID, o.PlanID,
	); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *Store) StripeSecretKey(ctx context.Context) (string, error) {
	var key string
	err := s.db.QueryRowContext(ctx, `SELECT stripe_secret_key FROM settings WHERE id=1`).Scan(&key)
	return key, err
}

// UpsertPromoCode is §4.1.
func (s *Store) UpsertPromoCode(ctx context.Context, p *PromoCode) error {
	_, err := s.db.ExecContext(ctx,
		`INSERT INTO promo_codes (code, credit_omr, description, active, max_redemptions)
		 VALUES ($1,$2,$3,$4,$5)
		 ON CONFLICT (code) DO UPDATE SET credit_omr=EXCLUDED.credit_omr,
		 description=EXCLUDED.description, active=EXCLUDED.active,
		 max_redemptions=EXCLUDED.max_redemptions, deleted_at=NULL`,
		p.Code, p.CreditOMR, p.Description, p.Active, p.MaxRedemptions)
	return err
}

// ---------------------------------------------------------------------------- catalog

type Item struct {
	ID       string `yaml:"id"`
	PriceOMR int    `yaml:"price_omr"`
}

type Catalog struct {
	Plans  []Item `yaml:"plans"`
	Addons []Item `yaml:"addons"`
}

// Total is computeOrderTotal (§5.2 step 3): the plan's price plus known addons; apps are free.
func (c *Catalog) Total(planID string, addons []string) (int, error) {
	total, found := 0, false
	for _, p := range c.Plans {
		if p.ID == planID {
			total, found = p.PriceOMR, true
			break
		}
	}
	if !found {
		return 0, fmt.Errorf("plan %q not found", planID)
	}
	for _, id := range addons {
		for _, a := range c.Addons {
			if a.ID == id {
				total += a.PriceOMR
			}
		}
	}
	return total, nil
}

// ------------------------------------------------------------------------------- http

type ctxKey struct{}

func respondJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func respondError(w http.ResponseWriter, status int, msg string) {
	respondJSON(w, status, map[string]string{"error": msg})
}

// JWTAuth is §1.2.
func JWTAuth(secret []byte, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		header := r.Header.Get("Authorization")
		if !strings.HasPrefix(header, "Bearer ") {
			respondError(w, http.StatusUnauthorized, "missing or invalid authorization header")
			return
		}
		token, err := jwt.Parse(strings.TrimPrefix(header, "Bearer "),
			func(t *jwt.Token) (any, error) {
				if _, ok := t.Method.(*jwt.SigningMethodHMAC); !ok {
					return nil, fmt.Errorf("unexpected signing method %v", t.Header["alg"])
				}
				return secret, nil
			})
		if err != nil || !token.Valid {
			respondError(w, http.StatusUnauthorized, "invalid token")
			return
		}
		claims, ok := token.Claims.(jwt.MapClaims)
		if !ok {
			respondError(w, http.StatusUnauthorized, "invalid claims")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, claims)))
	})
}

func claimString(r *http.Request, name string) string {
	claims, _ := r.Context().Value(ctxKey{}).(jwt.MapClaims)
	s, _ := claims[name].(string)
	return s
}

func uuid4() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Outer chain (§1.1): Recovery -> Logger -> RequestID -> CORS -> mux.
func middleware(next http.Handler, logger *log.Logger) http.Handler {
	cors := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "Content-Type, Authorization, X-Request-ID")
		w.Header().Set("Access-Control-Max-Age", "86400")
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
	requestID := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-ID")
		if id == "" {
			id = uuid4()
			r.Header.Set("X-Request-ID", id)
		}
		w.Header().Set("X-Request-ID", id)
		cors.ServeHTTP(w, r)
	})
	logged := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		requestID.ServeHTTP(rec, r)
		logger.Printf("%s %s %d %s", r.Method, r.URL.Path, rec.status, time.Since(start))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				logger.Printf("panic: %v", p)
				respondError(w, http.StatusInternalServerError, "internal server error")
			}
		}()
		logged.ServeHTTP(w, r)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

type Handlers struct {
	store   *Store
	catalog *Catalog
}

func method(want string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != want {
			w.Header().Set("Allow", want)
			http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
			return
		}
		h(w, r)
	}
}

type checkoutRequest struct {
	PlanID    string   `json:"plan_id"`
	TenantID  string   `json:"tenant_id"`
	Apps      []string `json:"apps"`
	Addons    []string `json:"addons"`
	PromoCode string   `json:"promo_code"`
}

type checkoutResponse struct {
	SessionURL    string `json:"session_url,omitempty"`
	OrderID       string `json:"order_id,omitempty"`
	PaidByCredit  bool   `json:"paid_by_credit,omitempty"`
	CreditBalance int    `json:"credit_balance,omitempty"`
}

// Checkout is E1 with §5.2's steps, up to the Stripe path's settings check.
func (h *Handlers) Checkout(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var req checkoutRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		respondError(w, http.StatusBadRequest, "invalid JSON body")
		return
	}
	if req.PlanID == "" || req.TenantID == "" {
		respondError(w, http.StatusBadRequest, "plan_id and tenant_id are required")
		return
	}
	sub := claimString(r, "sub")
	if sub == "" {
		respondError(w, http.StatusUnauthorized, "missing user identity")
		return
	}
	customer, err := h.store.GetCustomerByUserID(ctx, sub)
	if err != nil {
		respondError(w, http.StatusInternalServerError, "failed to look up customer")
		return
	}
	if customer == nil {
		customer = &Customer{UserID: sub, TenantID: req.TenantID, Email: claimString(r, "email")}
		if err := h.store.CreateCustomer(ctx, customer); err != nil {
			respondError(w, http.StatusInternalServerError, "failed to create customer")
			return
		}
	}
	total, err := h.catalog.Total(req.PlanID, req.Addons)
	if err != nil {
		respondError(w, http.StatusBadRequest, "failed to compute order total: "+err.Error())
		return
	}
	if req.PromoCode != "" {
		if _, err := h.store.RedeemPromoCode(ctx, customer.ID, req.PromoCode); err != nil {
			respondError(w, http.StatusBadRequest, "invalid promo code: "+err.Error())
			return
		}
	}
	balance, err := h.store.GetCreditBalance(ctx, customer.ID)
	if err != nil {
		respondError(w, http.StatusInternalServerError, "failed to check credit balance")
		return
	}
	if balance >= total {
		order := &Order{
			CustomerID: customer.ID, TenantID: req.TenantID, PlanID: req.PlanID,
			Apps: req.Apps, Addons: req.Addons, AmountOMR: total, PromoCode: req.PromoCode,
		}
		if err := h.store.CreditOnlyCheckout(ctx, order); err != nil {
			respondError(w, http.StatusInternalServerError, "failed to complete credit-only checkout")
			return
		}
		// dispatchOrderPlaced: no producer configured, a no-op as in the seed.
		respondJSON(w, http.StatusOK, checkoutResponse{
			OrderID: order.ID, PaidByCredit: true, CreditBalance: balance - total,
		})
		return
	}
	key, err := h.store.StripeSecretKey(ctx)
	if err != nil {
		respondError(w, http.StatusInternalServerError, "failed to load billing settings")
		return
	}
	if key == "" {
		respondError(w, http.StatusServiceUnavailable, "payment processor is not configured yet. "+
			"Please contact support or use a promo code that covers the full amount.")
		return
	}
	respondError(w, http.StatusNotImplemented, "the Stripe path is not part of this baseline")
}

type PromoCode struct {
	Code           string     `json:"code"`
	CreditOMR      int        `json:"credit_omr"`
	Description    string     `json:"description"`
	Active         bool       `json:"active"`
	MaxRedemptions int        `json:"max_redemptions"`
	TimesRedeemed  int        `json:"times_redeemed"`
	CreatedAt      time.Time  `json:"created_at"`
	DeletedAt      *time.Time `json:"deleted_at,omitempty"`
}

// IssueVoucher is E12.
func (h *Handlers) IssueVoucher(w http.ResponseWriter, r *http.Request) {
	if role := claimString(r, "role"); role != "superadmin" && role != "sovereign-admin" {
		respondError(w, http.StatusForbidden, "superadmin or sovereign-admin role required")
		return
	}
	var p PromoCode
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
		respondError(w, http.StatusBadRequest, "invalid JSON body")
		return
	}
	if p.Code == "" || p.CreditOMR <= 0 {
		respondError(w, http.StatusBadRequest, "code and credit_omr are required")
		return
	}
	p.Code = strings.ToUpper(strings.TrimSpace(p.Code))
	if err := h.store.UpsertPromoCode(r.Context(), &p); err != nil {
		respondError(w, http.StatusInternalServerError, "failed to save voucher")
		return
	}
	respondJSON(w, http.StatusOK, p)
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	logger := log.New(os.Stderr, "", log.LstdFlags)
	db, err := sql.Open("postgres", env("DATABASE_URL",
		"postgres://billing:billing@localhost:5432/billing?sslmode=disable"))
	if err != nil {
		logger.Fatalf("open database: %v", err)
	}
	// database/sql keeps only 2 idle connections by default: under 64 clients that would open
	// and close a PostgreSQL backend per request. A deployment sizes its pool; so does this one.
	conns, _ := strconv.Atoi(env("DB_MAX_CONNS", "64"))
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	store := &Store{db: db}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := store.Migrate(ctx); err != nil {
		logger.Fatalf("migrate: %v", err)
	}
	cancel()

	catalog := &Catalog{}
	raw, err := os.ReadFile(env("CATALOG_FILE", "catalog.yaml"))
	if err != nil {
		logger.Fatalf("catalog: %v", err)
	}
	if err := yaml.Unmarshal(raw, catalog); err != nil {
		logger.Fatalf("catalog: %v", err)
	}

	h := &Handlers{store: store, catalog: catalog}
	routes := http.NewServeMux()
	routes.HandleFunc("/billing/checkout", method(http.MethodPost, h.Checkout))
	routes.HandleFunc("/billing/vouchers/issue", method(http.MethodPost, h.IssueVoucher))
	authed := JWTAuth([]byte(os.Getenv("JWT_SECRET")), routes)

	root := http.NewServeMux()
	root.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		respondJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	root.Handle("/billing/", authed)

	addr := env("HOST", "127.0.0.1") + ":" + env("PORT", "8085")
	logger.Printf("seed billing listening on %s", addr)
	// The request log goes to a file the bench names (REQUEST_LOG), as the seed logs to stdout.
	requests := logger
	if path := os.Getenv("REQUEST_LOG"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			logger.Fatalf("request log: %v", err)
		}
		requests = log.New(f, "", log.LstdFlags)
	}
	server := &http.Server{Addr: addr, Handler: middleware(root, requests)}
	logger.Fatal(server.ListenAndServe())
}
