//! Plane geometry for text boxes: the smallest rotated rectangle around a set of points, its
//! corners in reading order, and growing it outward.

/// A point in pixel coordinates (x to the right, y down).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

impl Point {
    pub fn new(x: f32, y: f32) -> Point {
        Point { x, y }
    }

    fn minus(self, other: Point) -> Point {
        Point::new(self.x - other.x, self.y - other.y)
    }

    fn plus(self, other: Point) -> Point {
        Point::new(self.x + other.x, self.y + other.y)
    }

    fn times(self, factor: f32) -> Point {
        Point::new(self.x * factor, self.y * factor)
    }

    fn dot(self, other: Point) -> f32 {
        self.x * other.x + self.y * other.y
    }

    fn cross(self, other: Point) -> f32 {
        self.x * other.y - self.y * other.x
    }

    pub fn distance(self, other: Point) -> f32 {
        let d = self.minus(other);
        d.dot(d).sqrt()
    }
}

/// A rotated rectangle by its corners: top left, top right, bottom right, bottom left.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quad {
    pub corners: [Point; 4],
}

impl Quad {
    /// The shorter side.
    pub fn short_side(&self) -> f32 {
        self.width().min(self.height())
    }

    /// The longer of the top and bottom sides.
    pub fn width(&self) -> f32 {
        let [a, b, c, d] = self.corners;
        a.distance(b).max(d.distance(c))
    }

    /// The longer of the left and right sides.
    pub fn height(&self) -> f32 {
        let [a, b, c, d] = self.corners;
        a.distance(d).max(b.distance(c))
    }

    /// Whether `p` lies inside (or on the edge of) the quad, a convex polygon.
    pub fn contains(&self, p: Point) -> bool {
        let signs: [f32; 4] = std::array::from_fn(|i| {
            let (a, b) = (self.corners[i], self.corners[(i + 1) % 4]);
            b.minus(a).cross(p.minus(a))
        });
        signs.iter().all(|&s| s >= 0.0) || signs.iter().all(|&s| s <= 0.0)
    }

    /// The same rectangle grown outward by `distance` on every side.
    pub fn grown(&self, distance: f32) -> Quad {
        let [a, b, _, d] = self.corners;
        let center = self.corners.iter().fold(Point::new(0.0, 0.0), |sum, &p| sum.plus(p)).times(0.25);
        let along = unit(b.minus(a));
        let across = unit(d.minus(a));
        let half_width = a.distance(b) / 2.0 + distance;
        let half_height = a.distance(d) / 2.0 + distance;
        let corner =
            |sx: f32, sy: f32| center.plus(along.times(sx * half_width)).plus(across.times(sy * half_height));
        Quad::ordered([corner(-1.0, -1.0), corner(1.0, -1.0), corner(1.0, 1.0), corner(-1.0, 1.0)])
    }

    /// The distance PP-OCR's DB post-processing grows a box by: its area times `ratio` over
    /// its perimeter.
    pub fn unclip_distance(&self, ratio: f32) -> f32 {
        let [a, b, _, d] = self.corners;
        let (width, height) = (a.distance(b), a.distance(d));
        let perimeter = 2.0 * (width + height);
        if perimeter == 0.0 { 0.0 } else { width * height * ratio / perimeter }
    }

    /// The same corners, listed from the top left (of the two leftmost corners the upper one)
    /// clockwise.
    pub fn ordered(corners: [Point; 4]) -> Quad {
        let mut by_x = corners;
        by_x.sort_by(|p, q| p.x.total_cmp(&q.x));
        let (left_top, left_bottom) =
            if by_x[0].y <= by_x[1].y { (by_x[0], by_x[1]) } else { (by_x[1], by_x[0]) };
        let (right_top, right_bottom) =
            if by_x[2].y <= by_x[3].y { (by_x[2], by_x[3]) } else { (by_x[3], by_x[2]) };
        Quad { corners: [left_top, right_top, right_bottom, left_bottom] }
    }

    /// The quad turned by a quarter (`quarters` = 1), half (2) or three quarters (3) turn
    /// counter-clockwise, as the crop it cuts out would be: another corner becomes its top left.
    pub fn turned(&self, quarters: usize) -> Quad {
        let mut corners = self.corners;
        corners.rotate_left(quarters % 4);
        Quad { corners }
    }
}

fn unit(p: Point) -> Point {
    let length = p.dot(p).sqrt();
    if length == 0.0 { Point::new(1.0, 0.0) } else { p.times(1.0 / length) }
}

/// The convex hull of `points`, counter-clockwise (in a y-up frame), without collinear points.
fn convex_hull(mut points: Vec<Point>) -> Vec<Point> {
    points.sort_by(|p, q| p.x.total_cmp(&q.x).then(p.y.total_cmp(&q.y)));
    points.dedup();
    if points.len() < 3 {
        return points;
    }
    let mut hull: Vec<Point> = Vec::with_capacity(2 * points.len());
    for pass in 0..2 {
        let start = hull.len();
        let ordered: Box<dyn Iterator<Item = &Point>> =
            if pass == 0 { Box::new(points.iter()) } else { Box::new(points.iter().rev()) };
        for &p in ordered {
            while hull.len() >= start + 2 {
                let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
                if b.minus(a).cross(p.minus(a)) <= 0.0 {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// The rotated rectangle of least area holding every point, its corners ordered; `None`
/// for fewer than two distinct points.
pub fn min_area_rect(points: Vec<Point>) -> Option<Quad> {
    let hull = convex_hull(points);
    if hull.len() < 2 {
        return None;
    }
    let mut best: Option<(f32, [Point; 4])> = None;
    for i in 0..hull.len() {
        let edge = hull[(i + 1) % hull.len()].minus(hull[i]);
        if edge.dot(edge) == 0.0 {
            continue;
        }
        let along = unit(edge);
        let across = Point::new(-along.y, along.x);
        let (mut min_a, mut max_a, mut min_c, mut max_c) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in &hull {
            let (a, c) = (p.dot(along), p.dot(across));
            (min_a, max_a, min_c, max_c) = (min_a.min(a), max_a.max(a), min_c.min(c), max_c.max(c));
        }
        let area = (max_a - min_a) * (max_c - min_c);
        if best.is_none_or(|(least, _)| area < least) {
            let corner = |a: f32, c: f32| along.times(a).plus(across.times(c));
            let corners =
                [corner(min_a, min_c), corner(max_a, min_c), corner(max_a, max_c), corner(min_a, max_c)];
            best = Some((area, corners));
        }
    }
    best.map(|(_, corners)| Quad::ordered(corners))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(p: Point, x: f32, y: f32) -> bool {
        (p.x - x).abs() < 1e-3 && (p.y - y).abs() < 1e-3
    }

    #[test]
    fn an_upright_block_gives_its_bounds() {
        let points = (0..=10).flat_map(|x| (0..=4).map(move |y| Point::new(x as f32, y as f32))).collect();
        let quad = min_area_rect(points).unwrap();
        let [a, b, c, d] = quad.corners;
        assert!(
            close(a, 0.0, 0.0) && close(b, 10.0, 0.0) && close(c, 10.0, 4.0) && close(d, 0.0, 4.0),
            "{quad:?}"
        );
        assert!((quad.width() - 10.0).abs() < 1e-3 && (quad.short_side() - 4.0).abs() < 1e-3);
        let grown = quad.grown(1.0);
        assert!(close(grown.corners[0], -1.0, -1.0) && close(grown.corners[2], 11.0, 5.0), "{grown:?}");
        assert!(quad.contains(Point::new(5.0, 2.0)) && !quad.contains(Point::new(11.0, 2.0)));
        assert_eq!(quad.turned(2).corners[0], quad.corners[2]);
    }

    #[test]
    fn a_tilted_block_gives_a_tilted_rectangle() {
        // A 20 × 4 bar tilted by about 11 degrees.
        let (cos, sin) = (0.98f32, 0.2f32);
        let points = (0..=20)
            .flat_map(|a| {
                (0..=4).map(move |c| {
                    Point::new(a as f32 * cos - c as f32 * sin, a as f32 * sin + c as f32 * cos)
                })
            })
            .collect();
        let quad = min_area_rect(points).unwrap();
        assert!((quad.width() - 20.0 * (cos * cos + sin * sin).sqrt()).abs() < 0.05, "{quad:?}");
        assert!((quad.short_side() - 4.0 * (cos * cos + sin * sin).sqrt()).abs() < 0.05, "{quad:?}");
        assert!(min_area_rect(vec![Point::new(1.0, 1.0)]).is_none());
    }
}
